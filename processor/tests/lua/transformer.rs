//! Incoming transformers (SPEC §7) on the engine: their globals, `howk.post` and its refusals,
//! and the delivery scripts' limits applied to them.

use std::time::Duration;

use bytes::Bytes;
use howk_processor::lua::transformer::{MAX_POSTS, Post, TransformerInput};
use howk_processor::lua::{LuaEngine, Script, ScriptError, ScriptErrorKind};

use crate::helpers::{engine, limited_engine};

fn input(body: &str) -> TransformerInput {
    TransformerInput {
        name: "fanout".into(),
        incoming: Bytes::from(body.to_owned()),
        headers: vec![
            ("content-type".into(), "application/json".into()),
            ("x-event".into(), "order.placed".into()),
        ],
    }
}

fn transform_on(
    engine: &mut LuaEngine,
    code: &str,
    config: Option<serde_json::Value>,
    allowed: &[&str],
) -> Result<Vec<Post>, ScriptError> {
    let allowed: Vec<String> = allowed.iter().map(|d| d.to_string()).collect();
    engine.transform(
        &Script::new(code, config),
        &input(r#"{"order": 7, "price": 1.50}"#),
        &allowed,
    )
}

fn transform(code: &str) -> Result<Vec<Post>, ScriptError> {
    transform_on(&mut engine(), code, None, &[])
}

#[test]
fn a_script_fans_one_body_out_howk_style() {
    let code = r#"
        local data = json.decode(incoming)
        local first = howk.post("https://billing.example.com/hook", data)
        howk.post("https://crm.example.com/hook", {order = data.order, seen_by = first},
            {config_id = "crm:eu", headers = {["X-Source"] = "shop", ["X-N"] = 7},
             max_attempts = 5, signing_secret = "s3cret", idempotency_key = "o-7"})
        howk.post("https://audit.example.com/" .. headers["X-Event"], {ct = headers["Content-Type"]})
    "#;
    let posts = transform(code).unwrap();
    assert_eq!(posts.len(), 3);
    assert_eq!(posts[0].config_id, "fanout", "the script's name by default");
    assert_eq!(posts[0].endpoint, "https://billing.example.com/hook");
    let payload: serde_json::Value = serde_json::from_slice(&posts[0].payload).unwrap();
    assert_eq!(payload["order"], 7);
    assert!(posts[0].id.starts_with("wh_"), "{}", posts[0].id);
    let second: serde_json::Value = serde_json::from_slice(&posts[1].payload).unwrap();
    assert_eq!(
        second["seen_by"],
        posts[0].id.as_str(),
        "howk.post returns the id"
    );
    assert_eq!(posts[1].config_id, "crm:eu");
    assert_eq!(
        posts[1].headers,
        [
            ("X-N".to_owned(), "7".to_owned()),
            ("X-Source".into(), "shop".into())
        ]
    );
    assert_eq!(posts[1].max_attempts, Some(5));
    assert_eq!(posts[1].signing_secret.as_deref(), Some("s3cret"));
    assert_eq!(posts[1].idempotency_key.as_deref(), Some("o-7"));
    assert_eq!(posts[2].endpoint, "https://audit.example.com/order.placed");
    let third: serde_json::Value = serde_json::from_slice(&posts[2].payload).unwrap();
    assert_eq!(third["ct"], "application/json", "headers read in any case");
}

#[test]
fn the_enqueue_body_keeps_the_payload_text_and_the_options() {
    let posts = transform(
        r#"howk.post("https://e.example.com/h", json.decode('{"big": 123456789012345678}'),
            {max_attempts = 3})"#,
    )
    .unwrap();
    let body: serde_json::Value = serde_json::from_slice(&posts[0].enqueue_body()).unwrap();
    assert_eq!(body["payload"]["big"], 123456789012345678u64);
    assert_eq!(body["endpoint"], "https://e.example.com/h");
    assert_eq!(body["id"], posts[0].id.as_str());
    assert_eq!(body["max_attempts"], 3);
    assert!(body.get("signing_secret").is_none());
}

#[test]
fn config_is_the_json_file_and_allowed_domains_are_enforced() {
    let code = r#"
        local ok_id = howk.post("https://api." .. config.base .. "/in", {})
        local nope, err = howk.post("https://evil.test/x", {})
        local below = howk.post("https://a.hooks.test/x", {})
        howk.post("https://api." .. config.base .. "/report", {nope = nope == nil, err = err, below = below ~= nil})
    "#;
    let config = serde_json::json!({"base": "example.com", "allowed_domains": ["api.example.com", "*.hooks.test"]});
    let posts = transform_on(
        &mut engine(),
        code,
        Some(config),
        &["api.example.com", "*.hooks.test"],
    )
    .unwrap();
    assert_eq!(posts.len(), 3);
    let report: serde_json::Value = serde_json::from_slice(&posts[2].payload).unwrap();
    assert_eq!(report["nope"], true);
    assert!(
        report["err"]
            .as_str()
            .unwrap()
            .contains("not in this transformer's allowed_domains"),
        "{report}"
    );
    assert_eq!(report["below"], true);
}

#[test]
fn refused_posts_return_nil_and_a_reason() {
    for (call, reason) in [
        (r#"howk.post(42, {})"#, "endpoint must be a string"),
        (r#"howk.post("ftp://e.example.com", {})"#, "http or https"),
        (
            r#"howk.post("https://e.example.com", function() end)"#,
            "payload",
        ),
        (
            r#"howk.post("https://e.example.com", {}, {max_attempts = 0})"#,
            "max_attempts must be an integer from 1 to 100",
        ),
        (
            r#"howk.post("https://e.example.com", {}, {signing_secret = "whsk_AAAA"})"#,
            "32 or 64 bytes",
        ),
        (
            r#"howk.post("https://e.example.com", {}, {colour = "red"})"#,
            "unknown option",
        ),
        (
            r#"howk.post("https://e.example.com", {}, {config_id = ""})"#,
            "must not be empty",
        ),
    ] {
        let code = format!(
            r#"local id, err = {call}
               assert(id == nil, "posted")
               howk.post("https://report.example.com", {{err = err}})"#
        );
        let posts = transform(&code).unwrap_or_else(|error| panic!("{call}: {error:?}"));
        assert_eq!(posts.len(), 1, "{call}: the refused post is not kept");
        let report: serde_json::Value = serde_json::from_slice(&posts[0].payload).unwrap();
        let err = report["err"].as_str().unwrap();
        assert!(err.contains(reason), "{call}: {err}");
    }
}

#[test]
fn a_request_fans_out_to_at_most_max_posts() {
    let code = format!(
        r#"for i = 1, {MAX_POSTS} do assert(howk.post("https://e.example.com/" .. i, {{}})) end
           local id, err = howk.post("https://e.example.com/over", {{}})
           assert(id == nil and err:find("at most"), err)"#
    );
    assert_eq!(transform(&code).unwrap().len(), MAX_POSTS);
}

#[test]
fn script_errors_keep_their_classes() {
    let error = transform("error('boom')").unwrap_err();
    assert_eq!(error.kind, ScriptErrorKind::Runtime);
    assert!(error.message.contains("boom"));
    let error = transform("howk.post(").unwrap_err();
    assert_eq!(error.kind, ScriptErrorKind::Syntax);
    let mut limited = limited_engine(Duration::from_millis(50), 8);
    let error = transform_on(&mut limited, "while true do end", None, &[]).unwrap_err();
    assert_eq!(error.kind, ScriptErrorKind::Timeout);
    let mut small = limited_engine(Duration::from_secs(5), 8);
    let error = transform_on(
        &mut small,
        "local t = {} for i = 1, 1e8 do t[i] = string.rep('x', 64) .. i end",
        None,
        &[],
    )
    .unwrap_err();
    assert_eq!(error.kind, ScriptErrorKind::MemoryLimit);
    // The engine serves the next request after a limit tripped.
    assert_eq!(
        transform_on(
            &mut limited,
            r#"howk.post("https://e.example.com", {})"#,
            None,
            &[]
        )
        .unwrap()
        .len(),
        1
    );
}

#[test]
fn globals_do_not_leak_between_requests_or_into_delivery_scripts() {
    let mut engine = engine();
    transform_on(&mut engine, "leaked = incoming; howk.extra = 1", None, &[]).unwrap();
    let posts = transform_on(
        &mut engine,
        r#"howk.post("https://e.example.com", {leaked = leaked == nil, extra = howk.extra == nil})"#,
        None,
        &[],
    )
    .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&posts[0].payload).unwrap();
    assert_eq!(report, serde_json::json!({"leaked": true, "extra": true}));
}
