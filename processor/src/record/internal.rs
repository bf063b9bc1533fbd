//! The internal records of `howk.delivery` and `howk.retry`: postcard behind a version byte, so
//! a later format can be told apart and old records still read during an upgrade.

use serde::{Deserialize, Serialize};

use super::webhook::Webhook;
use crate::lua::PreviousError;

/// The format written today: 2 added the webhook's `previous_signing_secret`, `origin`,
/// `replay_generation` and `script_pin`.
const VERSION: u8 = 2;

/// A webhook on its way to (another) delivery attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryRecord {
    /// The webhook as accepted — original payload and headers on every attempt.
    pub webhook: Webhook,
    /// The last failure, on retries.
    pub previous_error: Option<StoredPreviousError>,
    /// When a retry is due (ms since the epoch); 0 for a first attempt.
    pub due_at_ms: i64,
}

/// `PreviousError` in storable form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredPreviousError {
    pub status_code: Option<u16>,
    pub error: String,
    pub attempt: u32,
}

impl From<&StoredPreviousError> for PreviousError {
    fn from(stored: &StoredPreviousError) -> Self {
        Self {
            status_code: stored.status_code,
            error: stored.error.clone(),
            attempt: stored.attempt,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InternalCodecError {
    #[error("empty record")]
    Empty,
    #[error("record format version {0} is not known to this howk")]
    UnknownVersion(u8),
    #[error("record does not decode: {0}")]
    Corrupt(String),
}

impl DeliveryRecord {
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = vec![VERSION];
        // Serializing plain data into a Vec cannot fail.
        bytes.extend(postcard::to_stdvec(self).expect("postcard encodes plain data"));
        bytes
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, InternalCodecError> {
        let corrupt = |error: postcard::Error| InternalCodecError::Corrupt(error.to_string());
        match bytes.split_first() {
            None => Err(InternalCodecError::Empty),
            Some((&VERSION, rest)) => postcard::from_bytes(rest).map_err(corrupt),
            Some((1, rest)) => postcard::from_bytes::<v1::DeliveryRecord>(rest)
                .map(Self::from)
                .map_err(corrupt),
            Some((&version, _)) => Err(InternalCodecError::UnknownVersion(version)),
        }
    }
}

/// Format 1, read during an upgrade (retries and spilled webhooks written by an older howk):
/// the same fields without the webhook's last four. Postcard encodes a struct as its fields in
/// order, so these mirror types read those bytes.
mod v1 {
    use bytes::Bytes;
    use serde::{Deserialize, Serialize};

    use super::StoredPreviousError;
    use crate::ids::{ConfigId, WebhookId};
    use crate::record::Secret;

    #[derive(Serialize, Deserialize)]
    pub struct Webhook {
        pub id: WebhookId,
        pub config_id: ConfigId,
        pub endpoint: String,
        pub payload: Bytes,
        pub payload_is_binary: bool,
        pub headers: Vec<(String, String)>,
        pub idempotency_key: Option<String>,
        pub signing_secret: Option<Secret>,
        pub max_attempts: u32,
        pub attempt: u32,
        pub created_at_ms: i64,
        pub script_hash: Option<String>,
        pub retry_on_status: Vec<u16>,
        pub delivery_query_params: Vec<(String, String)>,
        pub delivery_headers: Vec<(String, String)>,
    }

    #[derive(Serialize, Deserialize)]
    pub struct DeliveryRecord {
        pub webhook: Webhook,
        pub previous_error: Option<StoredPreviousError>,
        pub due_at_ms: i64,
    }
}

impl From<v1::DeliveryRecord> for DeliveryRecord {
    fn from(old: v1::DeliveryRecord) -> Self {
        let w = old.webhook;
        Self {
            webhook: Webhook {
                id: w.id,
                config_id: w.config_id,
                endpoint: w.endpoint,
                payload: w.payload,
                payload_is_binary: w.payload_is_binary,
                headers: w.headers,
                idempotency_key: w.idempotency_key,
                signing_secret: w.signing_secret,
                max_attempts: w.max_attempts,
                attempt: w.attempt,
                created_at_ms: w.created_at_ms,
                script_hash: w.script_hash,
                retry_on_status: w.retry_on_status,
                delivery_query_params: w.delivery_query_params,
                delivery_headers: w.delivery_headers,
                previous_signing_secret: None,
                origin: None,
                replay_generation: 0,
                script_pin: None,
            },
            previous_error: old.previous_error,
            due_at_ms: old.due_at_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::ids::{ConfigId, WebhookId};
    use crate::record::webhook::Secret;

    fn record() -> DeliveryRecord {
        DeliveryRecord {
            webhook: Webhook {
                id: WebhookId::generate(),
                config_id: ConfigId::new("music:1"),
                endpoint: "https://e.com/h".into(),
                payload: Bytes::from_static(&[0, 1, 2, 255]),
                payload_is_binary: true,
                headers: vec![("X-A".into(), "1".into())],
                idempotency_key: Some("k".into()),
                signing_secret: Some(Secret::new("s")),
                max_attempts: 5,
                attempt: 2,
                created_at_ms: 1_764_149_400_123,
                script_hash: Some("abc".into()),
                retry_on_status: vec![401],
                delivery_query_params: vec![("t".into(), "${T}".into())],
                delivery_headers: vec![],
                previous_signing_secret: Some(crate::record::PreviousSecret {
                    secret: Secret::new("old"),
                    expires_at_ms: 1_764_149_500_000,
                }),
                origin: Some(crate::record::webhook::Origin {
                    topic: "howk.pending".into(),
                    partition: 2,
                    offset: 77,
                }),
                replay_generation: 1,
                script_pin: None,
            },
            previous_error: Some(StoredPreviousError {
                status_code: Some(503),
                error: "HTTP 503".into(),
                attempt: 1,
            }),
            due_at_ms: 1_764_149_410_000,
        }
    }

    #[test]
    fn round_trips() {
        let record = record();
        assert_eq!(DeliveryRecord::decode(&record.encode()).unwrap(), record);
    }

    #[test]
    fn format_1_records_still_decode() {
        // What an older howk wrote: the webhook without its previous secret.
        let mut record = record();
        record.webhook.previous_signing_secret = None;
        record.webhook.origin = None;
        record.webhook.replay_generation = 0;
        record.webhook.script_pin = None;
        let w = record.webhook.clone();
        let old = v1::DeliveryRecord {
            webhook: v1::Webhook {
                id: w.id,
                config_id: w.config_id,
                endpoint: w.endpoint,
                payload: w.payload,
                payload_is_binary: w.payload_is_binary,
                headers: w.headers,
                idempotency_key: w.idempotency_key,
                signing_secret: w.signing_secret,
                max_attempts: w.max_attempts,
                attempt: w.attempt,
                created_at_ms: w.created_at_ms,
                script_hash: w.script_hash,
                retry_on_status: w.retry_on_status,
                delivery_query_params: w.delivery_query_params,
                delivery_headers: w.delivery_headers,
            },
            previous_error: record.previous_error.clone(),
            due_at_ms: record.due_at_ms,
        };
        let mut bytes = vec![1];
        bytes.extend(postcard::to_stdvec(&old).unwrap());
        assert_eq!(DeliveryRecord::decode(&bytes).unwrap(), record);
    }

    #[test]
    fn unknown_versions_and_garbage_are_errors() {
        let mut bytes = record().encode();
        bytes[0] = 9;
        assert_eq!(
            DeliveryRecord::decode(&bytes),
            Err(InternalCodecError::UnknownVersion(9))
        );
        assert_eq!(DeliveryRecord::decode(&[]), Err(InternalCodecError::Empty));
        assert!(matches!(
            DeliveryRecord::decode(&[VERSION, 200]),
            Err(InternalCodecError::Corrupt(_))
        ));
    }
}
