//! What howk writes about a webhook: one [`DeliveryResult`] per attempt and terminal event on
//! `howk.results`, and a [`DeadLetter`] on `howk.deadletter` when it gives up (SPEC §2).
//!
//! A dead letter shows the webhook as accepted, minus its secrets: `signing_secret` is removed
//! and headers that carry credentials are redacted. An invalid record is shown as its raw bytes
//! (redacted the same way when they are a JSON object).

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::webhook::Webhook;
use crate::lua::ScriptErrorKind;

/// The `outcome` of a DeliveryResult.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The ingest stage took the webhook.
    Accepted,
    Delivered,
    RetryScheduled,
    DeadLettered,
    /// Held back by an open circuit; no attempt spent.
    CircuitOpen,
    /// An idempotency repeat, dropped.
    Duplicate,
}

/// One record of `howk.results`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryResult {
    pub webhook_id: String,
    pub config_id: String,
    pub endpoint: String,
    pub attempt: u32,
    pub outcome: Outcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_code: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub duration_ms: u64,
    /// RFC 3339.
    pub timestamp: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_retry_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub script_hash: Option<String>,
}

/// The `reason_type` of a dead letter (SPEC §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReasonType {
    Exhausted,
    /// A status that is not retryable.
    Unrecoverable,
    /// 410 Gone.
    Gone,
    InvalidRecord,
    ScriptDisabled,
    ScriptNotFound,
    ScriptSyntaxError,
    ScriptRuntimeError,
    ScriptTimeout,
    ScriptMemoryLimit,
    ScriptInvalidOutput,
    CryptoKeyNotFound,
}

impl From<ScriptErrorKind> for ReasonType {
    fn from(kind: ScriptErrorKind) -> Self {
        match kind {
            ScriptErrorKind::Disabled => Self::ScriptDisabled,
            ScriptErrorKind::NotFound => Self::ScriptNotFound,
            ScriptErrorKind::Syntax => Self::ScriptSyntaxError,
            ScriptErrorKind::Runtime => Self::ScriptRuntimeError,
            ScriptErrorKind::Timeout => Self::ScriptTimeout,
            ScriptErrorKind::MemoryLimit => Self::ScriptMemoryLimit,
            ScriptErrorKind::InvalidOutput => Self::ScriptInvalidOutput,
            ScriptErrorKind::CryptoKeyNotFound => Self::CryptoKeyNotFound,
        }
    }
}

/// One record of `howk.deadletter`.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    /// The webhook as accepted, redacted; for an invalid record, what could be read of it. Raw
    /// JSON, so a JSON payload keeps its exact bytes (number text, key order, escapes).
    pub webhook: Box<serde_json::value::RawValue>,
    pub reason_type: ReasonType,
    pub reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_code: Option<u16>,
    /// First 1 KiB of the last response body, when `dlq.include_response_body`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_body: Option<String>,
    pub attempts: u32,
    /// RFC 3339.
    pub time: String,
    /// The `howk.pending` record the webhook was accepted from (for an invalid record: the
    /// record itself): what a re-drive reads again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin: Option<super::webhook::Origin>,
}

const REDACTED: &str = "[REDACTED]";

/// How much of an invalid record a dead letter copies: all of it up to 64 KiB, else its size and
/// this many first bytes.
pub const RAW_KEEP_BYTES: usize = 64 * 1024;

/// Whether a header's value is a credential that must not be copied into a dead letter.
pub fn is_secret_header(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    matches!(
        name.as_str(),
        "cookie" | "set-cookie" | "proxy-authorization"
    ) || [
        "auth",
        "token",
        "secret",
        "password",
        "api-key",
        "apikey",
        "signature",
    ]
    .iter()
    .any(|word| name.contains(word))
}

/// The webhook as a dead letter shows it: SPEC field names, payload as the exact JSON bytes it
/// was accepted with (or `payload_base64`), `signing_secret` removed, credential headers
/// redacted.
///
/// The payload is spliced in as raw text, never parsed into a `Value` and written again: that
/// would turn `1.50` into `1.5`, 30-digit integers into floats, reorder keys, and let `1e5`
/// grow into `100000.0` — a re-driven webhook must carry the bytes it was accepted with, and a
/// dead letter must not outgrow its webhook (review M5, C2).
pub fn redacted_webhook(webhook: &Webhook) -> Box<serde_json::value::RawValue> {
    let mut object = serde_json::Map::new();
    object.insert("id".into(), webhook.id.as_str().into());
    object.insert("config_id".into(), webhook.config_id.as_str().into());
    object.insert("endpoint".into(), webhook.endpoint.clone().into());
    let raw_payload = (!webhook.payload_is_binary)
        .then(|| serde_json::from_slice::<&serde_json::value::RawValue>(&webhook.payload).ok())
        .flatten();
    if raw_payload.is_none() {
        object.insert(
            "payload_base64".into(),
            base64::engine::general_purpose::STANDARD
                .encode(&webhook.payload)
                .into(),
        );
    }
    let headers: serde_json::Map<_, _> = webhook
        .headers
        .iter()
        .map(|(name, value)| {
            let value = if is_secret_header(name) {
                REDACTED
            } else {
                value.as_str()
            };
            (name.clone(), serde_json::Value::from(value))
        })
        .collect();
    object.insert("headers".into(), headers.into());
    if let Some(key) = &webhook.idempotency_key {
        object.insert("idempotency_key".into(), key.clone().into());
    }
    object.insert("max_attempts".into(), webhook.max_attempts.into());
    object.insert("attempt".into(), webhook.attempt.into());
    object.insert("created_at".into(), webhook.created_at_rfc3339().into());
    if let Some(hash) = &webhook.script_hash {
        object.insert("script_hash".into(), hash.clone().into());
    }
    if !webhook.retry_on_status.is_empty() {
        object.insert(
            "retry_on_status".into(),
            webhook.retry_on_status.clone().into(),
        );
    }
    // `_delivery_*` hold unresolved templates, never resolved values: safe to show.
    for (field, pairs) in [
        ("_delivery_query_params", &webhook.delivery_query_params),
        ("_delivery_headers", &webhook.delivery_headers),
    ] {
        if !pairs.is_empty() {
            let map: serde_json::Map<_, _> = pairs
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::from(v.as_str())))
                .collect();
            object.insert(field.into(), map.into());
        }
    }
    let fields = serde_json::to_string(&object).expect("a JSON map serializes");
    let text = match raw_payload {
        // `fields` is `{"id":...}`: never empty, so a comma always follows the payload.
        Some(payload) => format!("{{\"payload\":{},{}", payload.get(), &fields[1..]),
        None => fields,
    };
    serde_json::value::RawValue::from_string(text).expect("spliced from valid JSON")
}

/// `bytes` with the contents of every JSON string that is the value of a secret-looking key
/// replaced by `*`. A token scan, not a parse: it works on broken and truncated JSON (a string
/// cut off at the end is masked to the end).
fn mask_secret_values(bytes: &[u8]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    // The end (exclusive) of the string token starting at `start` (a quote).
    let string_end = |start: usize| -> usize {
        let mut at = start + 1;
        while at < bytes.len() {
            match bytes[at] {
                b'\\' => at += 2,
                b'"' => return at + 1,
                _ => at += 1,
            }
        }
        bytes.len()
    };
    let skip_space = |mut at: usize| {
        while at < bytes.len() && bytes[at].is_ascii_whitespace() {
            at += 1;
        }
        at
    };
    let mut at = 0;
    while at < bytes.len() {
        if bytes[at] != b'"' {
            at += 1;
            continue;
        }
        let end = string_end(at);
        let after = skip_space(end);
        if after < bytes.len() && bytes[after] == b':' {
            let value = skip_space(after + 1);
            let key = String::from_utf8_lossy(&bytes[at + 1..end.saturating_sub(1).max(at + 1)]);
            if value < bytes.len() && bytes[value] == b'"' && is_secret_header(&key) {
                let value_end = string_end(value);
                let inner_end = if value_end > value + 1 && bytes[value_end - 1] == b'"' {
                    value_end - 1
                } else {
                    value_end
                };
                out[value + 1..inner_end].fill(b'*');
                at = value_end;
                continue;
            }
        }
        at = end;
    }
    out
}

/// What a dead letter shows of a record that is not a valid webhook: the JSON object with
/// `signing_secret` removed and credential headers redacted, or else the raw bytes (as text when
/// they are UTF-8, else base64).
///
/// A record over [`RAW_KEEP_BYTES`] (an oversize webhook) is shown by its size and first bytes:
/// the dead letter must fit the dead-letter topic's record limit.
///
/// Bytes kept as they are (a prefix, or text that is not a JSON object) have the string value of
/// every secret-looking key masked (`signing_secret`, `Authorization`, ...), found by scanning the
/// JSON tokens, so a broken or truncated record does not carry its secrets into the dead letter.
pub fn redacted_raw_record(raw: &[u8]) -> serde_json::Value {
    if raw.len() > RAW_KEEP_BYTES {
        return serde_json::json!({
            "raw_bytes": raw.len(),
            "raw_prefix_base64": base64::engine::general_purpose::STANDARD
                .encode(mask_secret_values(&raw[..RAW_KEEP_BYTES])),
        });
    }
    if let Ok(serde_json::Value::Object(mut object)) =
        serde_json::from_slice::<serde_json::Value>(raw)
    {
        object.remove("signing_secret");
        object.remove("previous_signing_secret");
        if let Some(serde_json::Value::Object(headers)) = object.get_mut("headers") {
            for (name, value) in headers.iter_mut() {
                if is_secret_header(name) {
                    *value = REDACTED.into();
                }
            }
        }
        return serde_json::json!({ "raw_json": object });
    }
    let masked = mask_secret_values(raw);
    match std::str::from_utf8(&masked) {
        Ok(text) => serde_json::json!({ "raw": text }),
        Err(_) => serde_json::json!({
            "raw_base64": base64::engine::general_purpose::STANDARD.encode(&masked)
        }),
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::ids::{ConfigId, WebhookId};
    use crate::record::webhook::Secret;

    fn webhook() -> Webhook {
        Webhook {
            id: WebhookId::parse("wh_1").unwrap(),
            config_id: ConfigId::new("music:1"),
            endpoint: "https://e.com/h".into(),
            payload: Bytes::from_static(br#"{"a":1}"#),
            payload_is_binary: false,
            headers: vec![
                ("Authorization".into(), "Bearer secret".into()),
                ("X-Api-Key".into(), "k".into()),
                ("X-Trace".into(), "t".into()),
            ],
            idempotency_key: None,
            signing_secret: Some(Secret::new("whsec_x")),
            max_attempts: 20,
            attempt: 3,
            created_at_ms: 0,
            script_hash: None,
            retry_on_status: vec![],
            delivery_query_params: vec![],
            delivery_headers: vec![("Authorization".into(), "Bearer ${TOKEN}".into())],
            previous_signing_secret: Some(crate::record::PreviousSecret {
                secret: Secret::new("whsec_old"),
                expires_at_ms: 1,
            }),
            origin: None,
            replay_generation: 0,
            script_pin: None,
        }
    }

    #[test]
    fn dead_letter_payload_keeps_its_exact_bytes() {
        let original = r#"{"b":1.50,"a":123456789012345678901234567890,"e":1e5,"s":"\u00e9"}"#;
        let mut hook = webhook();
        hook.payload = Bytes::from(original);
        let shown = redacted_webhook(&hook);
        assert!(
            shown
                .get()
                .starts_with(&format!(r#"{{"payload":{original},"#)),
            "{}",
            shown.get()
        );
        let letter: serde_json::Value = serde_json::from_str(shown.get()).unwrap();
        assert_eq!(letter["id"], "wh_1");
        // Binary payloads go as base64.
        hook.payload = Bytes::from_static(&[0xff, 0x00]);
        hook.payload_is_binary = true;
        let letter: serde_json::Value =
            serde_json::from_str(redacted_webhook(&hook).get()).unwrap();
        assert_eq!(letter["payload_base64"], "/wA=");
        assert!(letter.get("payload").is_none());
    }

    #[test]
    fn dead_letter_webhook_has_no_secrets() {
        let raw = redacted_webhook(&webhook());
        let text = raw.get().to_owned();
        let shown: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert!(!text.contains("whsec_x"), "{text}");
        assert!(!text.contains("whsec_old"), "{text}");
        assert!(!text.contains("Bearer secret"), "{text}");
        assert_eq!(shown["headers"]["Authorization"], REDACTED);
        assert_eq!(shown["headers"]["X-Api-Key"], REDACTED);
        assert_eq!(shown["headers"]["X-Trace"], "t");
        assert_eq!(shown["payload"]["a"], 1);
        assert_eq!(
            shown["_delivery_headers"]["Authorization"],
            "Bearer ${TOKEN}"
        );
        assert!(shown.get("signing_secret").is_none());
    }

    #[test]
    fn raw_records_are_redacted_or_kept_as_bytes() {
        let shown =
            redacted_raw_record(br#"{"signing_secret":"s","previous_signing_secret":"p","headers":{"Cookie":"c"},"payload":1}"#);
        assert!(shown["raw_json"].get("signing_secret").is_none());
        assert!(shown["raw_json"].get("previous_signing_secret").is_none());
        assert_eq!(shown["raw_json"]["headers"]["Cookie"], REDACTED);
        assert_eq!(redacted_raw_record(b"not json")["raw"], "not json");
        assert_eq!(redacted_raw_record(&[0xff, 0x00])["raw_base64"], "/wA=");
        let huge = vec![b'x'; RAW_KEEP_BYTES + 1];
        assert_eq!(redacted_raw_record(&huge)["raw_bytes"], RAW_KEEP_BYTES + 1);
    }

    #[test]
    fn secrets_in_broken_or_oversize_records_are_masked() {
        // Not JSON (cut off), so kept as text: the secret values are masked, the rest kept.
        let broken = br#"{"signing_secret": "whsec_abc\"d", "headers": {"Authorization": "Bearer t0k", "X-Plain": "1"}, "payload": {"#;
        let shown = redacted_raw_record(broken);
        let text = shown["raw"].as_str().unwrap();
        assert!(
            !text.contains("whsec_abc") && !text.contains("t0k"),
            "{text}"
        );
        assert!(text.contains(r#""X-Plain": "1""#), "{text}");
        assert_eq!(text.len(), broken.len(), "masked in place");
        // Oversize: the kept prefix is masked too, even a value cut off at its end.
        let mut big = br#"{"previous_signing_secret":"old-secret","payload":""#.to_vec();
        big.extend(vec![b'x'; RAW_KEEP_BYTES]);
        let shown = redacted_raw_record(&big);
        let prefix = base64::engine::general_purpose::STANDARD
            .decode(shown["raw_prefix_base64"].as_str().unwrap())
            .unwrap();
        assert!(!String::from_utf8_lossy(&prefix).contains("old-secret"));
        let cut = mask_secret_values(br#"{"signing_secret": "whsec_cut"#);
        assert_eq!(cut, br#"{"signing_secret": "*********"#);
    }

    #[test]
    fn outcome_and_reason_names_match_the_spec() {
        assert_eq!(
            serde_json::to_value(Outcome::RetryScheduled).unwrap(),
            "retry_scheduled"
        );
        assert_eq!(
            serde_json::to_value(ReasonType::CryptoKeyNotFound).unwrap(),
            "crypto_key_not_found"
        );
        for kind in [
            ScriptErrorKind::Timeout,
            ScriptErrorKind::InvalidOutput,
            ScriptErrorKind::Disabled,
        ] {
            assert_eq!(
                serde_json::to_value(ReasonType::from(kind)).unwrap(),
                kind.reason_type()
            );
        }
    }
}
