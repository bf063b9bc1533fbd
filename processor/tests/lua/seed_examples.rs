//! The seed's example scripts (shared/seed), run as users write them.

use base64::Engine as _;

use crate::helpers::*;

#[test]
fn header_transform_example() {
    let webhook = Webhook::payload(br#"{"event":"signup"}"#.to_vec());
    let request = run_on(
        &mut engine(),
        r#"
-- Add custom headers
headers["X-Transformed"] = "by-lua-script"
headers["X-Original-Payload"] = payload

-- Access metadata
headers["X-Config"] = metadata.config_id
"#,
        &webhook,
    )
    .unwrap();
    assert_eq!(header(&request, "X-Transformed"), Some("by-lua-script"));
    assert_eq!(
        header(&request, "X-Original-Payload"),
        Some(r#"{"event":"signup"}"#)
    );
    assert_eq!(header(&request, "X-Config"), Some("music:10"));
    assert_eq!(request.body, None);
}

#[test]
fn json_transform_example() {
    let webhook = Webhook::payload(br#"{"user":{"id":42},"tags":["a"]}"#.to_vec());
    let request = run_on(
        &mut engine(),
        r#"
local json = require("json")
local data = json.decode(payload)
data.enriched = true
request.body = json.encode(data)
"#,
        &webhook,
    )
    .unwrap();
    let body: serde_json::Value = serde_json::from_slice(&request.body.unwrap()).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"user": {"id": 42}, "tags": ["a"], "enriched": true})
    );
}

#[test]
fn binary_png_from_base64_example() {
    // A PNG header plus bytes of every value, shipped base64-encoded inside JSON.
    let mut png = vec![0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];
    png.extend(0..=255u8);
    let encoded = base64::engine::general_purpose::STANDARD.encode(&png);
    let webhook = Webhook::payload(format!(r#"{{"image":"{encoded}"}}"#).into_bytes());
    let request = run_on(
        &mut engine(),
        r#"
local data = json.decode(payload)
request.body = base64.decode(data.image)
request.headers["Content-Type"] = "image/png"
"#,
        &webhook,
    )
    .unwrap();
    assert_eq!(request.body.as_deref(), Some(&png[..]));
    assert_eq!(header(&request, "Content-Type"), Some("image/png"));
}
