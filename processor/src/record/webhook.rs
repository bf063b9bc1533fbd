//! The webhook as accepted (SPEC §2 **Webhook**), decoded from a `howk.pending` record.
//!
//! `payload` is kept as the exact bytes of its JSON text — whitespace, `1.50`, 30-digit integers
//! and `\u` escapes reach the receiver unchanged unless a script sets a body — by borrowing it as
//! a `RawValue` instead of parsing it. A record that is not JSON, lacks `endpoint`, or is too
//! large is an [`InvalidRecord`] with a precise reason: the ingest stage dead-letters it with
//! its raw bytes and moves on.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::ids::{ConfigId, WebhookId};

/// Most attempts a webhook may ask for.
pub const MAX_ATTEMPTS_LIMIT: u32 = 100;

/// A secret that never shows in logs or `Debug` output.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// A webhook as accepted: what travels on `howk.delivery` and `howk.retry` and what a dead
/// letter shows (redacted).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Webhook {
    pub id: WebhookId,
    pub config_id: ConfigId,
    pub endpoint: String,
    /// The body bytes: `payload`'s exact JSON text, or `payload_base64` decoded.
    pub payload: Bytes,
    /// The body came from `payload_base64` (binary), not `payload`.
    pub payload_is_binary: bool,
    pub headers: Vec<(String, String)>,
    pub idempotency_key: Option<String>,
    pub signing_secret: Option<Secret>,
    /// Total delivery attempts allowed.
    pub max_attempts: u32,
    /// 0-based attempt.
    pub attempt: u32,
    /// Milliseconds since the epoch.
    pub created_at_ms: i64,
    /// The script version the producer saw: the deliver stage waits for it (SPEC §2 fence).
    pub script_hash: Option<String>,
    pub retry_on_status: Vec<u16>,
    /// `_delivery_query_params`: unresolved `${VAR}` templates, resolved at send time only.
    pub delivery_query_params: Vec<(String, String)>,
    /// `_delivery_headers`: unresolved `${VAR}` templates, resolved at send time only.
    pub delivery_headers: Vec<(String, String)>,
    /// A secret being rotated out: attempts sign with it too until it expires.
    pub previous_signing_secret: Option<PreviousSecret>,
    /// Where the webhook was accepted from: its `howk.pending` record, which a re-drive reads
    /// again (exact bytes, secrets included). `None` for records written before format 2.
    pub origin: Option<Origin>,
    /// 0 for the original; a re-drive enqueues the same id with a higher generation, which the
    /// idempotency store does not take for a repeat of the earlier ones.
    pub replay_generation: u32,
    /// A replay's script choice: run exactly this version (hash) of the config's script, or
    /// no script (`"none"`), instead of the latest.
    pub script_pin: Option<String>,
}

/// A `howk.pending` record's place in the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// The secret a webhook signed with before its current one, until `expires_at_ms`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreviousSecret {
    pub secret: Secret,
    /// Milliseconds since the epoch: attempts from then on sign with the current secret only.
    pub expires_at_ms: i64,
}

impl Webhook {
    /// The secrets an attempt at `now_ms` signs with: the current one, then the previous one
    /// while its rotation window lasts. Empty without a `signing_secret`.
    pub fn signing_secrets(&self, now_ms: i64) -> Vec<&Secret> {
        let Some(current) = &self.signing_secret else {
            return Vec::new();
        };
        let mut secrets = vec![current];
        if let Some(previous) = &self.previous_signing_secret
            && now_ms < previous.expires_at_ms
        {
            secrets.push(&previous.secret);
        }
        secrets
    }

    /// `created_at` as RFC 3339 (UTC, milliseconds).
    pub fn created_at_rfc3339(&self) -> String {
        DateTime::<Utc>::from_timestamp_millis(self.created_at_ms)
            .unwrap_or_default()
            .to_rfc3339_opts(SecondsFormat::Millis, true)
    }
}

/// Where a pending record came from, for the defaults SPEC §2 derives from it.
#[derive(Debug, Clone, Copy)]
pub struct PendingContext<'a> {
    /// The record key: the config_id when the value has none.
    pub key: Option<&'a [u8]>,
    /// The record timestamp: `created_at` when the value has none.
    pub timestamp_ms: i64,
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    /// Largest record accepted, in bytes.
    pub max_record_bytes: usize,
    /// `retry.max_attempts`, when the webhook does not say.
    pub default_max_attempts: u32,
}

/// Why a pending record cannot become a webhook. The text is the dead letter's `reason`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidRecord(pub String);

fn invalid<T>(reason: impl Into<String>) -> Result<T, InvalidRecord> {
    Err(InvalidRecord(reason.into()))
}

#[derive(Deserialize)]
struct PendingJson<'a> {
    id: Option<String>,
    config_id: Option<String>,
    endpoint: Option<String>,
    #[serde(borrow)]
    payload: Option<&'a RawValue>,
    payload_base64: Option<String>,
    headers: Option<BTreeMap<String, String>>,
    idempotency_key: Option<String>,
    signing_secret: Option<String>,
    previous_signing_secret: Option<String>,
    previous_signing_secret_expires_at: Option<String>,
    replay_generation: Option<u32>,
    script_pin: Option<String>,
    max_attempts: Option<u32>,
    attempt: Option<u32>,
    created_at: Option<String>,
    script_hash: Option<String>,
    retry_on_status: Option<Vec<u16>>,
    #[serde(rename = "_delivery_query_params")]
    delivery_query_params: Option<BTreeMap<String, String>>,
    #[serde(rename = "_delivery_headers")]
    delivery_headers: Option<BTreeMap<String, String>>,
}

/// Whether `endpoint` is an absolute http(s) URL with a host.
pub fn validate_endpoint(endpoint: &str) -> Result<(), String> {
    match reqwest::Url::parse(endpoint) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host_str().is_some() => Ok(()),
        Ok(url) => Err(format!(
            "endpoint must be an http or https URL with a host, got scheme {:?}",
            url.scheme()
        )),
        Err(error) => Err(format!("endpoint is not a URL: {error}")),
    }
}

impl Webhook {
    /// Decodes and validates one `howk.pending` value.
    pub fn decode_pending(
        value: &[u8],
        context: &PendingContext<'_>,
    ) -> Result<Self, InvalidRecord> {
        if value.len() > context.max_record_bytes {
            return invalid(format!(
                "record of {} bytes exceeds the {} byte limit",
                value.len(),
                context.max_record_bytes
            ));
        }
        let json: PendingJson<'_> = serde_json::from_slice(value)
            .map_err(|error| InvalidRecord(format!("not a valid webhook JSON object: {error}")))?;

        let endpoint = match json.endpoint {
            Some(endpoint) => endpoint,
            None => return invalid("missing endpoint"),
        };
        validate_endpoint(&endpoint).map_err(InvalidRecord)?;

        let config_id = match (json.config_id, context.key) {
            (Some(id), _) if !id.is_empty() => id,
            (_, Some(key)) if !key.is_empty() => match std::str::from_utf8(key) {
                Ok(key) => key.to_owned(),
                Err(_) => return invalid("record key (the default config_id) is not UTF-8"),
            },
            _ => return invalid("missing config_id (neither in the value nor the record key)"),
        };

        let (payload, payload_is_binary) = match (json.payload, json.payload_base64) {
            (Some(_), Some(_)) => return invalid("payload and payload_base64 are exclusive"),
            (Some(raw), None) => (Bytes::copy_from_slice(raw.get().as_bytes()), false),
            (None, Some(encoded)) => {
                match base64::engine::general_purpose::STANDARD.decode(encoded.trim()) {
                    Ok(bytes) => (Bytes::from(bytes), true),
                    Err(error) => return invalid(format!("payload_base64 is not base64: {error}")),
                }
            }
            (None, None) => return invalid("missing payload (or payload_base64)"),
        };

        let id = match json.id {
            Some(id) => WebhookId::parse(&id).ok_or_else(|| {
                InvalidRecord("id must be 1 to 128 characters without control characters".into())
            })?,
            None => match &json.idempotency_key {
                Some(key) => WebhookId::from_idempotency_key(&config_id, key),
                None => WebhookId::from_offset(context.topic, context.partition, context.offset),
            },
        };

        let max_attempts = json.max_attempts.unwrap_or(context.default_max_attempts);
        if !(1..=MAX_ATTEMPTS_LIMIT).contains(&max_attempts) {
            return invalid(format!(
                "max_attempts must be 1 to {MAX_ATTEMPTS_LIMIT}, got {max_attempts}"
            ));
        }
        let created_at_ms = match json.created_at {
            Some(text) => match DateTime::parse_from_rfc3339(&text) {
                Ok(time) => time.timestamp_millis(),
                Err(error) => return invalid(format!("created_at is not RFC 3339: {error}")),
            },
            None => context.timestamp_ms,
        };
        let signing_secret = json
            .signing_secret
            .filter(|s| !s.is_empty())
            .map(Secret::new);
        let previous_signing_secret = previous_secret(
            signing_secret.as_ref(),
            json.previous_signing_secret,
            json.previous_signing_secret_expires_at,
        )?;
        let retry_on_status = json.retry_on_status.unwrap_or_default();
        if let Some(status) = retry_on_status.iter().find(|s| !(100..=599).contains(*s)) {
            return invalid(format!("retry_on_status has {status}, not an HTTP status"));
        }

        Ok(Self {
            id,
            config_id: ConfigId::new(config_id),
            endpoint,
            payload,
            payload_is_binary,
            headers: json.headers.unwrap_or_default().into_iter().collect(),
            idempotency_key: json.idempotency_key,
            signing_secret,
            max_attempts,
            attempt: json.attempt.unwrap_or(0),
            created_at_ms,
            script_hash: json.script_hash.filter(|h| !h.is_empty()),
            retry_on_status,
            delivery_query_params: json
                .delivery_query_params
                .unwrap_or_default()
                .into_iter()
                .collect(),
            delivery_headers: json
                .delivery_headers
                .unwrap_or_default()
                .into_iter()
                .collect(),
            previous_signing_secret,
            origin: Some(Origin {
                topic: context.topic.to_owned(),
                partition: context.partition,
                offset: context.offset,
            }),
            replay_generation: json.replay_generation.unwrap_or(0),
            script_pin: json.script_pin.filter(|pin| !pin.is_empty()),
        })
    }
}

/// Checks the signing secrets of a webhook being accepted: each must be able to sign, and a
/// previous secret needs a current one and an expiry.
fn previous_secret(
    current: Option<&Secret>,
    previous: Option<String>,
    expires_at: Option<String>,
) -> Result<Option<PreviousSecret>, InvalidRecord> {
    if let Some(current) = current {
        crate::delivery::sign::check_secret(current)
            .map_err(|error| InvalidRecord(error.to_string()))?;
    }
    let Some(previous) = previous.filter(|s| !s.is_empty()).map(Secret::new) else {
        return Ok(None);
    };
    if current.is_none() {
        return invalid("previous_signing_secret without a signing_secret");
    }
    crate::delivery::sign::check_secret(&previous)
        .map_err(|error| InvalidRecord(format!("previous_signing_secret: {error}")))?;
    let Some(text) = expires_at else {
        return invalid("previous_signing_secret needs previous_signing_secret_expires_at");
    };
    let expires_at_ms = DateTime::parse_from_rfc3339(&text)
        .map_err(|error| {
            InvalidRecord(format!(
                "previous_signing_secret_expires_at is not RFC 3339: {error}"
            ))
        })?
        .timestamp_millis();
    Ok(Some(PreviousSecret {
        secret: previous,
        expires_at_ms,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context() -> PendingContext<'static> {
        PendingContext {
            key: Some(b"music:10"),
            timestamp_ms: 1_764_149_400_000,
            topic: "howk.pending",
            partition: 2,
            offset: 77,
            max_record_bytes: 1024 * 1024,
            default_max_attempts: 20,
        }
    }

    fn decode(json: &str) -> Result<Webhook, InvalidRecord> {
        Webhook::decode_pending(json.as_bytes(), &context())
    }

    #[test]
    fn payload_bytes_are_kept_exactly() {
        let raw = r#"{ "price": 1.50, "id": 123456789012345678901234567890, "s": "\u00e9" }"#;
        let webhook = decode(&format!(
            r#"{{"endpoint":"https://example.com/h","payload":{raw}}}"#
        ))
        .unwrap();
        assert_eq!(&webhook.payload[..], raw.as_bytes());
        assert!(!webhook.payload_is_binary);
    }

    #[test]
    fn defaults_come_from_the_record() {
        let webhook = decode(r#"{"endpoint":"https://example.com/h","payload":{}}"#).unwrap();
        assert_eq!(webhook.config_id.as_str(), "music:10");
        assert_eq!(webhook.created_at_ms, 1_764_149_400_000);
        assert_eq!(webhook.max_attempts, 20);
        assert_eq!(webhook.attempt, 0);
        assert_eq!(webhook.id, WebhookId::from_offset("howk.pending", 2, 77));
        assert_eq!(webhook.created_at_rfc3339(), "2025-11-26T09:30:00.000Z");
    }

    #[test]
    fn idempotency_key_derives_the_id() {
        let webhook =
            decode(r#"{"endpoint":"https://e.com","payload":1,"idempotency_key":"k1"}"#).unwrap();
        assert_eq!(
            webhook.id,
            WebhookId::from_idempotency_key("music:10", "k1")
        );
    }

    #[test]
    fn fields_are_read() {
        let webhook = decode(
            r#"{"id":"wh_given","config_id":"video:1","endpoint":"http://e.com/x","payload_base64":"AAH/",
                "headers":{"X-A":"1"},"signing_secret":"whsec_abc","max_attempts":3,"attempt":1,
                "created_at":"2026-01-02T03:04:05+02:00","script_hash":"abc","retry_on_status":[401],
                "_delivery_query_params":{"token":"${T}"},"_delivery_headers":{"Authorization":"Bearer ${T}"}}"#,
        )
        .unwrap();
        assert_eq!(webhook.id.as_str(), "wh_given");
        assert_eq!(webhook.config_id.as_str(), "video:1");
        assert_eq!(&webhook.payload[..], &[0, 1, 255]);
        assert!(webhook.payload_is_binary);
        assert_eq!(webhook.headers, [("X-A".to_string(), "1".to_string())]);
        assert_eq!(
            webhook.signing_secret.as_ref().unwrap().expose(),
            "whsec_abc"
        );
        assert_eq!(format!("{:?}", webhook.signing_secret), "Some(Secret(***))");
        assert_eq!((webhook.max_attempts, webhook.attempt), (3, 1));
        assert_eq!(webhook.created_at_ms, 1_767_315_845_000);
        assert_eq!(webhook.retry_on_status, [401]);
        assert_eq!(
            webhook.delivery_query_params,
            [("token".to_string(), "${T}".to_string())]
        );
        assert_eq!(webhook.delivery_headers[0].1, "Bearer ${T}");
    }

    #[test]
    fn invalid_records_name_their_reason() {
        for (json, reason) in [
            ("not json", "not a valid webhook JSON object"),
            ("[1,2]", "not a valid webhook JSON object"),
            (r#"{"payload":{}}"#, "missing endpoint"),
            (
                r#"{"endpoint":"ftp://e.com","payload":{}}"#,
                "http or https",
            ),
            (r#"{"endpoint":"not a url","payload":{}}"#, "not a URL"),
            (r#"{"endpoint":"https://e.com"}"#, "missing payload"),
            (
                r#"{"endpoint":"https://e.com","payload":1,"payload_base64":"AA=="}"#,
                "exclusive",
            ),
            (
                r#"{"endpoint":"https://e.com","payload":1,"max_attempts":0}"#,
                "max_attempts",
            ),
            (
                r#"{"endpoint":"https://e.com","payload":1,"created_at":"yesterday"}"#,
                "RFC 3339",
            ),
            (
                r#"{"endpoint":"https://e.com","payload":1,"retry_on_status":[42]}"#,
                "not an HTTP status",
            ),
            (
                r#"{"endpoint":"https://e.com","payload_base64":"!!"}"#,
                "not base64",
            ),
            (
                r#"{"endpoint":"https://e.com","payload":1,"signing_secret":"whsec_!!"}"#,
                "starts with whsec_ but the rest is not base64",
            ),
            (
                r#"{"endpoint":"https://e.com","payload":1,"signing_secret":"whsk_AAAA"}"#,
                "32 or 64 bytes",
            ),
            (
                r#"{"endpoint":"https://e.com","payload":1,"previous_signing_secret":"p",
                    "previous_signing_secret_expires_at":"2030-01-01T00:00:00Z"}"#,
                "without a signing_secret",
            ),
            (
                r#"{"endpoint":"https://e.com","payload":1,"signing_secret":"s",
                    "previous_signing_secret":"p"}"#,
                "needs previous_signing_secret_expires_at",
            ),
            (
                r#"{"endpoint":"https://e.com","payload":1,"signing_secret":"s",
                    "previous_signing_secret":"whsec_!!",
                    "previous_signing_secret_expires_at":"2030-01-01T00:00:00Z"}"#,
                "previous_signing_secret: signing_secret starts with whsec_",
            ),
        ] {
            let error = decode(json).unwrap_err();
            assert!(error.0.contains(reason), "{json}: {error}");
        }
        let big = format!(
            r#"{{"endpoint":"https://e.com","payload":"{}"}}"#,
            "x".repeat(2048)
        );
        let small = PendingContext {
            max_record_bytes: 1024,
            ..context()
        };
        let error = Webhook::decode_pending(big.as_bytes(), &small).unwrap_err();
        assert!(error.0.contains("exceeds the 1024 byte limit"), "{error}");
    }

    #[test]
    fn a_previous_secret_signs_until_it_expires() {
        let webhook = decode(
            r#"{"endpoint":"https://e.com","payload":1,"signing_secret":"new",
                "previous_signing_secret":"old",
                "previous_signing_secret_expires_at":"2030-01-01T00:00:00Z"}"#,
        )
        .unwrap();
        let expiry = 1_893_456_000_000; // 2030-01-01
        let exposed = |now| -> Vec<String> {
            webhook
                .signing_secrets(now)
                .iter()
                .map(|s| s.expose().to_owned())
                .collect()
        };
        assert_eq!(exposed(expiry - 1), ["new", "old"]);
        assert_eq!(exposed(expiry), ["new"]);
        assert!(format!("{webhook:?}").contains("Secret(***)"));
        assert!(!format!("{webhook:?}").contains("old"));
    }

    #[test]
    fn missing_config_id_without_key_is_invalid() {
        let no_key = PendingContext {
            key: None,
            ..context()
        };
        let error =
            Webhook::decode_pending(br#"{"endpoint":"https://e.com","payload":1}"#, &no_key)
                .unwrap_err();
        assert!(error.0.contains("missing config_id"), "{error}");
    }
}
