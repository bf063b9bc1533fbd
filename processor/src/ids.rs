//! Identifiers of SPEC §1.
//!
//! - [`WebhookId`]: `wh_` + 26 Crockford base32 characters — a ULID for a fresh webhook, or
//!   derived deterministically, so that a repeat yields the same id: from
//!   `(config_id, idempotency_key)` for idempotent enqueues, from `(topic, partition, offset)`
//!   for a record produced to Kafka without an id (a replay then keeps its ids).
//! - [`ConfigId`] and its namespace (the text before the first `:`).
//! - [`endpoint_hash`]: hex of the first 16 bytes of SHA-256 of the endpoint URL.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use ulid::Ulid;

/// A webhook's id, `wh_<26 Crockford chars>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct WebhookId(String);

impl WebhookId {
    /// A fresh, time-ordered id.
    pub fn generate() -> Self {
        Self(format!("wh_{}", Ulid::new()))
    }

    /// The id of an idempotent enqueue: the same `(config_id, idempotency_key)` always gives the
    /// same id, on any instance.
    pub fn from_idempotency_key(config_id: &str, idempotency_key: &str) -> Self {
        Self::derived(&["idempotency", config_id, idempotency_key])
    }

    /// The id of a record produced without one: stable across replays of the same offset.
    pub fn from_offset(topic: &str, partition: i32, offset: i64) -> Self {
        Self::derived(&["offset", topic, &partition.to_string(), &offset.to_string()])
    }

    /// 128 bits of SHA-256 over the length-prefixed parts, as a ULID-shaped text.
    fn derived(parts: &[&str]) -> Self {
        let mut hasher = Sha256::new();
        for part in parts {
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part.as_bytes());
        }
        let digest = hasher.finalize();
        let mut first = [0u8; 16];
        first.copy_from_slice(&digest[..16]);
        Self(format!("wh_{}", Ulid(u128::from_be_bytes(first))))
    }

    /// An id given by a producer; any non-empty text without control characters, at most 128
    /// bytes (ids of other systems are kept as they are).
    pub fn parse(text: &str) -> Option<Self> {
        let valid = !text.is_empty() && text.len() <= 128 && !text.chars().any(char::is_control);
        valid.then(|| Self(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for WebhookId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A tenant's config id: free text.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ConfigId(String);

impl ConfigId {
    pub fn new(id: impl Into<String>) -> Self {
        Self(id.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn namespace(&self) -> &str {
        namespace(&self.0)
    }
}

impl fmt::Display for ConfigId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The tenant namespace of a config_id: the text before its first `:` (`music:10` → `music`;
/// no `:` → the whole id). It scopes `kv` keys, http allowlists and the script lookup fallback.
pub fn namespace(config_id: &str) -> &str {
    config_id.split_once(':').map_or(config_id, |(ns, _)| ns)
}

/// Hex of the first 16 bytes of SHA-256 of the endpoint URL.
pub fn endpoint_hash(endpoint: &str) -> String {
    hex::encode(&Sha256::digest(endpoint.as_bytes())[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_is_the_text_before_the_first_colon() {
        assert_eq!(namespace("music:10"), "music");
        assert_eq!(namespace("org:123:prod"), "org");
        assert_eq!(namespace("plain"), "plain");
        assert_eq!(namespace(":x"), "");
    }

    fn assert_shape(id: &WebhookId) {
        let text = id.as_str();
        assert!(text.starts_with("wh_"), "{text}");
        assert_eq!(text.len(), 29, "{text}");
        assert!(
            text[3..]
                .chars()
                .all(|c| "0123456789ABCDEFGHJKMNPQRSTVWXYZ".contains(c)),
            "{text}"
        );
    }

    #[test]
    fn generated_and_derived_ids_have_the_spec_shape() {
        assert_shape(&WebhookId::generate());
        assert_shape(&WebhookId::from_idempotency_key("music:1", "order-42"));
        assert_shape(&WebhookId::from_offset("howk.pending", 3, 1234));
    }

    #[test]
    fn derived_ids_are_stable_and_distinct() {
        let a = WebhookId::from_idempotency_key("music:1", "order-42");
        assert_eq!(a, WebhookId::from_idempotency_key("music:1", "order-42"));
        assert_ne!(a, WebhookId::from_idempotency_key("music:2", "order-42"));
        // Length prefixes keep ("ab", "c") and ("a", "bc") apart.
        assert_ne!(
            WebhookId::from_idempotency_key("ab", "c"),
            WebhookId::from_idempotency_key("a", "bc")
        );
        assert_eq!(
            WebhookId::from_offset("t", 0, 7),
            WebhookId::from_offset("t", 0, 7)
        );
        assert_ne!(
            WebhookId::from_offset("t", 0, 7),
            WebhookId::from_offset("t", 1, 7)
        );
    }

    #[test]
    fn endpoint_hash_is_16_bytes_of_sha256() {
        let hash = endpoint_hash("https://example.com/hook");
        assert_eq!(hash.len(), 32);
        assert_eq!(hash, endpoint_hash("https://example.com/hook"));
    }
}
