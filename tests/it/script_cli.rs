//! `howk script test`: the real engine from the command line, with the API's report shape.

use std::process::Command;

fn script_test(code: &str, args: &[&str]) -> (serde_json::Value, bool) {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(&mut file, code.as_bytes()).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_howk"))
        .args(["script", "test"])
        .arg(file.path())
        .args(args)
        .env("HOWK_LUA_TIMEOUT", "200ms")
        .output()
        .expect("run howk");
    let report = serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
        panic!(
            "stdout is not a JSON report ({error}): {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (report, output.status.success())
}

#[test]
fn script_test_prints_the_transformed_request() {
    let (report, ok) = script_test(
        "local d = json.decode(payload) d.n = d.n + 1 request.body = json.encode(d) \
         headers['X-From'] = config.from",
        &[
            "--payload",
            r#"{"n":41}"#,
            "--header",
            "X-In=1",
            "--config",
            r#"{"from":"cli"}"#,
        ],
    );
    assert!(ok);
    assert_eq!(report["success"], true);
    assert_eq!(report["transformed_payload"], serde_json::json!({"n": 42}));
    assert_eq!(report["transformed_headers"]["X-In"], "1");
    assert_eq!(report["transformed_headers"]["X-From"], "cli");
}

#[test]
fn script_test_reports_errors_with_their_spec_type_and_fails() {
    let (report, ok) = script_test("while true do end", &[]);
    assert!(!ok);
    assert_eq!(report["error_type"], "script_timeout");
    let (report, ok) = script_test("local = 1", &[]);
    assert!(!ok);
    assert_eq!(report["error_type"], "script_syntax_error");
    assert!(report["error"].as_str().unwrap().contains("script:1:"));
}

#[test]
fn malformed_crypto_key_stops_startup_naming_the_variable() {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(&mut file, b"x = 1").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_howk"))
        .args(["script", "test"])
        .arg(file.path())
        .env(
            "HOWK_LUA_CRYPTO_BROKEN",
            "-----BEGIN PRIVATE KEY-----\nnot a key\n",
        )
        .output()
        .expect("run howk");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("HOWK_LUA_CRYPTO_BROKEN"), "{stderr}");
    assert!(output.stdout.is_empty(), "nothing ran");
}

#[test]
fn script_test_has_the_io_modules() {
    let (report, ok) = script_test(
        "local err = kv.set('k', 'v') assert(not err, err) \
         local r, herr = http.get('http://127.0.0.1:9/') \
         request.body = kv.get('k') .. '|' .. herr .. '|' .. type(crypto.decrypt_credential)",
        &[],
    );
    assert!(ok, "{report}");
    let body = report["transformed_payload_base64"]
        .as_str()
        .map(|b| String::from_utf8(base64_decode(b)).unwrap())
        .unwrap_or_else(|| report["transformed_payload"].to_string());
    assert!(body.starts_with("v|http.get: "), "{body}");
    assert!(body.ends_with("|function"), "{body}");
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap()
}
