//! The `api` configuration section.

use std::collections::BTreeMap;

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
    /// `howk run` and `howk api` refuse to start with script routes open (no `admin_token`)
    /// unless this says so. `howk dev` is always open. Default false.
    pub allow_unauthenticated_admin: bool,
    /// Ingress tokens: token → the namespaces it may enqueue to and read statuses of (`"*"`:
    /// all). When any is set, enqueue and status need `Authorization: Bearer <token>` (or the
    /// admin token); without any, they stay open. Default none. Give them through
    /// `HOWK_API_INGRESS_TOKENS` as JSON (`{"tok_…": ["shop", "music"]}`), not the file.
    pub ingress_tokens: BTreeMap<String, Vec<String>>,
}

/// What a request's bearer token grants on enqueue and status routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant<'a> {
    /// No ingress tokens are configured, or the admin token was given: every namespace.
    All,
    /// An ingress token: these namespaces.
    Namespaces(&'a [String]),
    /// Tokens are configured and none (or an unknown one) was given.
    None,
}

impl Grant<'_> {
    pub fn allows(&self, namespace: &str) -> bool {
        match self {
            Grant::All => true,
            Grant::Namespaces(list) => list.iter().any(|ns| ns == "*" || ns == namespace),
            Grant::None => false,
        }
    }
}

impl ApiConfig {
    /// What `bearer` (the token after `Bearer `, if any) grants on ingress routes.
    pub fn ingress_grant(&self, bearer: Option<&str>) -> Grant<'_> {
        if self.ingress_tokens.is_empty() {
            return Grant::All;
        }
        let Some(given) = bearer else {
            return Grant::None;
        };
        if let Some(admin) = &self.admin_token
            && crate::constant_time_eq(given.as_bytes(), admin.as_bytes())
        {
            return Grant::All;
        }
        // Every token is compared, so the time taken does not tell which one matched.
        let mut grant = Grant::None;
        for (token, namespaces) in &self.ingress_tokens {
            if crate::constant_time_eq(given.as_bytes(), token.as_bytes()) {
                grant = Grant::Namespaces(namespaces);
            }
        }
        grant
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            host: "0.0.0.0".to_owned(),
            port: 8080,
            max_request_size: 1024 * 1024,
            admin_token: None,
            allow_unauthenticated_admin: false,
            ingress_tokens: BTreeMap::new(),
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
            .field(
                "allow_unauthenticated_admin",
                &self.allow_unauthenticated_admin,
            )
            .field(
                "ingress_tokens",
                &self
                    .ingress_tokens
                    .values()
                    .map(|namespaces| ("[REDACTED]", namespaces))
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}
