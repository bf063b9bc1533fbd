//! `ScriptConfig`, the value of `howk.scripts` (SPEC §2): one tenant's delivery script, keyed by
//! config_id; a null value deletes it. Written by the API's script PUT (or any producer), read
//! into the scripts table on every instance.

use serde::{Deserialize, Serialize};

use crate::lua::script::script_hash;

/// One script version as it travels on `howk.scripts`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScriptConfig {
    pub config_id: String,
    pub lua_code: String,
    /// SHA-256 hex of `lua_code`; recomputed on read when a producer left it out.
    #[serde(default)]
    pub hash: String,
    /// The producer's label for this version (free text).
    #[serde(default)]
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script_config: Option<serde_json::Value>,
    /// RFC 3339.
    #[serde(default)]
    pub created_at: String,
    /// RFC 3339.
    #[serde(default)]
    pub updated_at: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScriptConfigError {
    #[error("script record is not a ScriptConfig JSON object: {0}")]
    Json(String),
    #[error("script_config must be a JSON object")]
    ConfigNotObject,
    #[error("hash {given} does not match lua_code (its SHA-256 is {actual})")]
    HashMismatch { given: String, actual: String },
}

impl ScriptConfig {
    /// Decodes a `howk.scripts` value, filling in a missing hash and checking a given one.
    pub fn decode(bytes: &[u8]) -> Result<Self, ScriptConfigError> {
        let mut config: Self = serde_json::from_slice(bytes)
            .map_err(|error| ScriptConfigError::Json(error.to_string()))?;
        if config
            .script_config
            .as_ref()
            .is_some_and(|value| !value.is_object() && !value.is_null())
        {
            return Err(ScriptConfigError::ConfigNotObject);
        }
        let actual = script_hash(&config.lua_code);
        if config.hash.is_empty() {
            config.hash = actual;
        } else if !config.hash.eq_ignore_ascii_case(&actual) {
            return Err(ScriptConfigError::HashMismatch {
                given: config.hash,
                actual,
            });
        }
        Ok(config)
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a ScriptConfig serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_hash_is_computed_and_a_wrong_one_refused() {
        let config = ScriptConfig::decode(br#"{"config_id":"a","lua_code":"x = 1"}"#).unwrap();
        assert_eq!(config.hash, script_hash("x = 1"));
        let wrong = ScriptConfig::decode(br#"{"config_id":"a","lua_code":"x = 1","hash":"00"}"#);
        assert!(matches!(wrong, Err(ScriptConfigError::HashMismatch { .. })));
        assert!(ScriptConfig::decode(b"nope").is_err());
    }
}
