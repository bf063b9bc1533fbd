//! The `api` configuration section.

use serde::{Deserialize, Serialize};

/// `api.*`: the REST listener.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Address to listen on. Default `0.0.0.0`.
    pub host: String,
    /// Port to listen on; 0 picks a free one. Default 8080.
    pub port: u16,
    /// Largest request body, on every route (413 past it). Default 1048576 (1 MiB).
    pub max_request_size: usize,
    /// When set, script routes need `Authorization: Bearer <token>` (401 without). Default
    /// unset. Give it through `HOWK_API_ADMIN_TOKEN`, not the file.
    pub admin_token: Option<String>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            host: "0.0.0.0".to_owned(),
            port: 8080,
            max_request_size: 1024 * 1024,
            admin_token: None,
        }
    }
}

/// The token is a secret: never printed.
impl std::fmt::Debug for ApiConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("max_request_size", &self.max_request_size)
            .field(
                "admin_token",
                &self.admin_token.as_ref().map(|_| "[REDACTED]"),
            )
            .finish()
    }
}
