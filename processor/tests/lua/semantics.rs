//! Every input and output rule of SPEC §4, one test each.

use howk_processor::lua::{PreviousError, Script, ScriptErrorKind};
use serde_json::json;

use crate::helpers::*;

#[test]
fn payload_is_the_raw_body_and_binary_safe() {
    let all_bytes: Vec<u8> = (0..=255).collect();
    let webhook = Webhook::payload(all_bytes.clone());
    let request = run_on(&mut engine(), "request.body = payload .. payload", &webhook).unwrap();
    assert_eq!(
        request.body.unwrap(),
        [all_bytes.clone(), all_bytes].concat()
    );
}

#[test]
fn body_unset_means_original_payload() {
    let request = run("local x = 1").unwrap();
    assert_eq!(request.body, None);
}

#[test]
fn body_can_hold_every_byte_value() {
    let code = "local t = {} for i = 0, 255 do t[#t + 1] = string.char(i) end request.body = table.concat(t)";
    let request = run(code).unwrap();
    assert_eq!(request.body.unwrap(), (0..=255).collect::<Vec<u8>>());
}

#[test]
fn metadata_fields_and_integral_values_are_integers() {
    let body = body_of(
        "request.body = table.concat({metadata.webhook_id, metadata.config_id, \
         tostring(metadata.attempt), tostring(metadata.max_attempts), metadata.created_at, \
         math.type(metadata.attempt)}, '|')",
    );
    assert_eq!(
        body,
        "wh_01JTESTWEBHOOK0000000000000|music:10|0|20|2026-11-26T09:30:00Z|integer"
    );
}

#[test]
fn previous_error_is_nil_on_first_attempt_and_set_on_retries() {
    assert_eq!(body_of("request.body = tostring(previous_error)"), "nil");
    let webhook = Webhook {
        attempt: 2,
        previous_error: Some(PreviousError {
            status_code: Some(503),
            error: "HTTP 503".into(),
            attempt: 1,
        }),
        ..Webhook::default()
    };
    let request = run_on(
        &mut engine(),
        "request.body = previous_error.status_code .. '|' .. previous_error.error .. '|' .. \
         previous_error.attempt .. '|' .. metadata.attempt",
        &webhook,
    )
    .unwrap();
    assert_eq!(request.body.unwrap(), b"503|HTTP 503|1|2");
}

#[test]
fn previous_error_without_status_has_no_status_code() {
    let webhook = Webhook {
        attempt: 1,
        previous_error: Some(PreviousError {
            status_code: None,
            error: "connection refused".into(),
            attempt: 0,
        }),
        ..Webhook::default()
    };
    let request = run_on(
        &mut engine(),
        "request.body = tostring(previous_error.status_code) .. '|' .. previous_error.error",
        &webhook,
    )
    .unwrap();
    assert_eq!(request.body.unwrap(), b"nil|connection refused");
}

#[test]
fn headers_are_echoed_in_order_and_can_be_changed() {
    let webhook = Webhook::default().header("X-A", "1").header("X-B", "2");
    let request = run_on(&mut engine(), "headers['X-A'] = 'changed'", &webhook).unwrap();
    assert_eq!(
        request.headers,
        [
            ("Content-Type".into(), "application/json".into()),
            ("X-A".into(), "changed".into()),
            ("X-B".into(), "2".into())
        ]
    );
}

#[test]
fn empty_string_removes_a_header_in_either_table() {
    let webhook = Webhook::default().header("X-A", "1").header("X-B", "2");
    let request = run_on(
        &mut engine(),
        "headers['X-A'] = '' request.headers['X-B'] = ''",
        &webhook,
    )
    .unwrap();
    assert_eq!(
        request.headers,
        [("Content-Type".into(), "application/json".into())]
    );
}

#[test]
fn request_headers_win_over_headers_case_insensitively() {
    let request = run(
        "headers['X-Token'] = 'from-headers' request.headers['x-token'] = 'from-request' \
         request.headers['content-type'] = 'text/plain'",
    )
    .unwrap();
    assert_eq!(header(&request, "x-token"), Some("from-request"));
    assert_eq!(header(&request, "X-Token"), None);
    assert_eq!(header(&request, "content-type"), Some("text/plain"));
    assert_eq!(header(&request, "Content-Type"), None);
}

#[test]
fn request_table_has_headers_precreated() {
    let request = run("request.headers['X-New'] = 'yes'").unwrap();
    assert_eq!(header(&request, "X-New"), Some("yes"));
}

#[test]
fn numeric_header_values_are_sent_as_text() {
    let request = run("headers['X-Count'] = 42").unwrap();
    assert_eq!(header(&request, "X-Count"), Some("42"));
}

#[test]
fn retry_on_status_is_read() {
    let request = run("request.retry_on_status = {401, 403}").unwrap();
    assert_eq!(request.retry_on_status, [401, 403]);
}

#[test]
fn opt_out_default_headers_is_read_from_config() {
    assert!(!run("local x = 1").unwrap().opt_out_default_headers);
    assert!(
        run("config.opt_out_default_headers = true")
            .unwrap()
            .opt_out_default_headers
    );
}

#[test]
fn config_is_always_a_table() {
    assert_eq!(body_of("request.body = type(config)"), "table");
}

#[test]
fn config_resolves_variables_in_nested_strings_at_execution_time() {
    let mut engine =
        engine_with_env(&[("PARTNER_TOKEN", "t0k"), ("HOWK_API_ADMIN_TOKEN", "secret")]);
    let script = Script::new(
        "request.body = config.auth.header .. '|' .. config.list[1] .. '|' .. config.howk .. '|' \
         .. config.missing .. '|' .. config.literal .. '|' .. math.type(config.n)",
        Some(json!({
            "auth": {"header": "Bearer ${PARTNER_TOKEN}"},
            "list": ["${PARTNER_TOKEN}"],
            "howk": "${HOWK_API_ADMIN_TOKEN}",
            "missing": "${NOT_SET}",
            "literal": "$5",
            "n": 7
        })),
    );
    let request = engine
        .execute(&script, &Webhook::default().input())
        .unwrap();
    assert_eq!(request.body.unwrap(), b"Bearer t0k|t0k|||$5|integer");
}

#[test]
fn invalid_outputs_name_the_field() {
    for (code, needle) in [
        ("request.body = {}", "request.body must be a string"),
        ("request = 5", "request must be a table"),
        ("request.retry_on_status = {'x'}", "retry_on_status[1]"),
        ("request.retry_on_status = {99}", "not an HTTP status"),
        ("headers['Bad Name'] = 'x'", "not a valid HTTP header name"),
        ("headers['X-Inject'] = 'a\\r\\nEvil: 1'", "line break"),
        ("request.headers[1] = 'x'", "keys must be header names"),
        ("headers['X-Bool'] = true", "must be a string"),
    ] {
        let error = run(code).unwrap_err();
        assert_eq!(
            error.kind,
            ScriptErrorKind::InvalidOutput,
            "{code}: {error}"
        );
        assert!(error.message.contains(needle), "{code}: {error}");
    }
}

#[test]
fn syntax_error_names_the_line() {
    let error = run("local ok = 1\nlocal = 2").unwrap_err();
    assert_eq!(error.kind, ScriptErrorKind::Syntax);
    assert!(error.message.starts_with("script:2:"), "{}", error.message);
}

#[test]
fn runtime_error_names_the_line_and_is_not_retryable() {
    let error = run("local t = nil\n\nlocal x = t.field").unwrap_err();
    assert_eq!(error.kind, ScriptErrorKind::Runtime);
    assert!(error.message.starts_with("script:3:"), "{}", error.message);
    assert!(!error.is_retryable());
    let error = run("error('custom failure')").unwrap_err();
    assert!(
        error.message.contains("custom failure"),
        "{}",
        error.message
    );
}

#[test]
fn validate_reports_syntax_errors_without_running() {
    let mut engine = engine();
    assert!(engine.validate("while true do end").is_ok());
    let error = engine.validate("if then").unwrap_err();
    assert_eq!(error.kind, ScriptErrorKind::Syntax);
    assert!(error.message.contains("script:1:"), "{}", error.message);
}

#[test]
fn top_level_return_and_varargs_compile() {
    assert!(
        run("if true then return end request.body = 'never'")
            .unwrap()
            .body
            .is_none()
    );
    assert!(run("local n = select('#', ...)").is_ok());
}

#[test]
fn lua51_idioms_work() {
    let body = body_of(
        "local a, b = unpack({1, 2}) local s = ('%d-%d'):format(a, b) \
         local t = {} for w in string.gmatch('one two', '%a+') do t[#t + 1] = w end \
         request.body = s .. ' ' .. #t .. ' ' .. string.gsub('hello', 'l+', 'L')",
    );
    assert_eq!(body, "1-2 2 heLo");
}

#[test]
fn print_and_log_do_not_fail() {
    assert!(
        run(
            "print('a', 1, nil, {}) log.info('hello', {n = 1}) log.debug('x') \
                 log.warn('y', {a = {1, 2}}) log.error('z')"
        )
        .is_ok()
    );
    // More lines than the allowance are dropped, not an error.
    assert!(run("for i = 1, 500 do log.info('spam', {i = i}) end").is_ok());
}

#[test]
fn modules_are_globals_and_requirable() {
    let body = body_of(
        "request.body = tostring(require('json') == json) .. tostring(require('base64') == base64) \
         .. tostring(require('log') == log)",
    );
    assert_eq!(body, "truetruetrue");
    let error = run("require('socket')").unwrap_err();
    assert!(
        error.message.contains("module 'socket' not found"),
        "{error}"
    );
}

#[test]
fn base64_round_trips_binary_and_reports_bad_input() {
    assert_eq!(
        body_of("request.body = base64.encode('\\0\\1\\255hi')"),
        "AAH/aGk="
    );
    assert_eq!(
        body_of("request.body = base64.decode('AAH/aGk=') == '\\0\\1\\255hi' and 'ok' or 'bad'"),
        "ok"
    );
    assert_eq!(body_of("request.body = base64.decode('aGk')"), "hi");
    assert_eq!(
        body_of("local v, err = base64.decode('!!!') request.body = tostring(v) .. ' ' .. err"),
        "nil invalid base64: Invalid symbol 33, offset 0."
    );
}
