//! What a script execution takes and gives: the script itself, the webhook as the script sees
//! it (SPEC §4 inputs), and the request it leaves behind (SPEC §4 outputs).

use std::sync::Arc;

use sha2::{Digest, Sha256};

/// One version of a tenant's script, as the scripts table holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct Script {
    /// SHA-256 hex of `code`: the compiled-chunk cache key and the version fence of SPEC §2.
    pub hash: String,
    pub code: Arc<str>,
    /// `script_config`, exposed to the script as `config` with `${VAR}` resolved per execution.
    pub config: Option<Arc<serde_json::Value>>,
}

impl Script {
    pub fn new(code: impl Into<Arc<str>>, config: Option<serde_json::Value>) -> Self {
        let code = code.into();
        Self {
            hash: script_hash(&code),
            code,
            config: config.map(Arc::new),
        }
    }
}

/// SHA-256 hex of a script's code (SPEC §1).
pub fn script_hash(code: &str) -> String {
    hex::encode(Sha256::digest(code.as_bytes()))
}

/// The webhook as one execution sees it.
#[derive(Debug, Clone, Copy)]
pub struct ScriptInput<'a> {
    /// The raw body bytes, exactly as accepted (the original on every attempt).
    pub payload: &'a [u8],
    /// The webhook's headers, in order.
    pub headers: &'a [(String, String)],
    pub metadata: ScriptMetadata<'a>,
    /// The last failure, on retries.
    pub previous_error: Option<&'a PreviousError>,
}

/// The `metadata` global.
#[derive(Debug, Clone, Copy)]
pub struct ScriptMetadata<'a> {
    pub webhook_id: &'a str,
    pub config_id: &'a str,
    /// 0-based delivery attempt.
    pub attempt: u32,
    pub max_attempts: u32,
    /// RFC 3339.
    pub created_at: &'a str,
}

/// The `previous_error` global: what went wrong on the last attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreviousError {
    pub status_code: Option<u16>,
    pub error: String,
    /// 0-based attempt that failed, like `metadata.attempt`.
    pub attempt: u32,
}

/// The request a script leaves behind; the delivery stage sends exactly this.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TransformedRequest {
    /// `request.body` when the script set one; `None` sends the original payload.
    pub body: Option<Vec<u8>>,
    /// The full header map after the script: input headers in their order (removals applied,
    /// values as set), then headers the script added, by name. Names as written.
    pub headers: Vec<(String, String)>,
    /// `request.retry_on_status`: extra statuses to treat as retryable for this webhook.
    pub retry_on_status: Vec<u16>,
    /// `config.opt_out_default_headers`: send no `X-Webhook-*` default headers.
    pub opt_out_default_headers: bool,
}
