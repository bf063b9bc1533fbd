//! The internal records of `howk.delivery` and `howk.retry`: postcard behind a version byte, so
//! a later format can be told apart and old records still read during an upgrade.

use serde::{Deserialize, Serialize};

use super::webhook::Webhook;
use crate::lua::PreviousError;

/// The format written today.
const VERSION: u8 = 1;

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
        match bytes.split_first() {
            None => Err(InternalCodecError::Empty),
            Some((&VERSION, rest)) => postcard::from_bytes(rest)
                .map_err(|error| InternalCodecError::Corrupt(error.to_string())),
            Some((&version, _)) => Err(InternalCodecError::UnknownVersion(version)),
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
    fn unknown_versions_and_garbage_are_errors() {
        let mut bytes = record().encode();
        bytes[0] = 9;
        assert_eq!(
            DeliveryRecord::decode(&bytes),
            Err(InternalCodecError::UnknownVersion(9))
        );
        assert_eq!(DeliveryRecord::decode(&[]), Err(InternalCodecError::Empty));
        assert!(matches!(
            DeliveryRecord::decode(&[1, 200]),
            Err(InternalCodecError::Corrupt(_))
        ));
    }
}
