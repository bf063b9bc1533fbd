//! The `lua` configuration section (SPEC §8): whether scripts run, and their limits.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use std::sync::Arc;

use super::engine::EngineSettings;
use super::modules::LuaModule;
use super::modules::crypto::{CryptoKeys, CryptoModule};
use super::modules::http::{HttpModule, HttpSettings};
use super::modules::io::IoRuntime;
use super::modules::kv::{Kv, KvModule};
use super::template::{EnvLookup, TemplateResolver};
use crate::net::AddressPolicy;

/// `lua.*`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LuaConfig {
    /// Whether scripts run. When false, a webhook that has or pins a script is dead-lettered
    /// `script_disabled` rather than delivered untransformed. Default true.
    pub enabled: bool,
    /// Wall-clock budget of one execution, module I/O included. Default 500ms.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Memory one execution may allocate, in MiB. Default 50.
    pub memory_limit_mb: u64,
    /// Globs of environment variables `${VAR}` may resolve (`PARTNER_*`); empty = any variable
    /// but `HOWK_*`, which never resolve. Default empty.
    pub env_allowlist: Vec<String>,
    /// `kv.set` expiry when the script gives no `ttl_secs`. Default 24h.
    #[serde(with = "humantime_serde")]
    pub kv_ttl_default: Duration,
    /// The most one `kv` call may take (less when the execution has less left). Default 1s.
    #[serde(with = "humantime_serde")]
    pub kv_timeout: Duration,
    /// Hosts the `http` module may reach: `*`, `*.example.com` (apex included), exact names.
    /// `HOWK_LUA_ALLOW_HOSTNAME_{NAMESPACE}` replaces it for one namespace. Default empty:
    /// no host.
    pub allowed_hosts: Vec<String>,
    /// The most one `http` request may take, redirects included. Default 5s.
    #[serde(with = "humantime_serde")]
    pub http_timeout: Duration,
    /// Largest response body the `http` module reads, in bytes. Default 1048576 (1 MiB).
    pub http_max_response_bytes: usize,
    /// Whether GETs with `opts.cache_ttl` are cached. Default false.
    pub http_cache_enabled: bool,
    /// The longest a cached response is kept. Default 5m.
    #[serde(with = "humantime_serde")]
    pub http_cache_ttl: Duration,
    /// Address ranges the `http` module may reach although they are loopback, private or
    /// link-local (`127.0.0.0/8` in tests). Default empty.
    pub http_allowed_cidrs: Vec<String>,
    /// Crypto key name → the namespaces whose scripts may use it. A key without an entry is
    /// usable by every namespace (as in HOWK); a namespace outside its list gets
    /// `crypto_key_not_found`, as if the key did not exist. Default empty. Through the
    /// environment: `HOWK_LUA_CRYPTO_KEY_SCOPES` as JSON (`{"PARTNER": ["shop"]}`).
    pub crypto_key_scopes: BTreeMap<String, Vec<String>>,
}

/// A module that could not be set up from the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ModuleSetupError {
    #[error("lua.http_allowed_cidrs: {0}")]
    AllowedCidrs(#[from] crate::net::AddressPolicyError),
    #[error("cannot build the http module's client")]
    HttpClient(#[source] reqwest::Error),
}

impl Default for LuaConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            timeout: Duration::from_millis(500),
            memory_limit_mb: 50,
            env_allowlist: Vec::new(),
            kv_ttl_default: Duration::from_secs(24 * 3600),
            kv_timeout: Duration::from_secs(1),
            allowed_hosts: Vec::new(),
            http_timeout: Duration::from_secs(5),
            http_max_response_bytes: 1024 * 1024,
            http_cache_enabled: false,
            http_cache_ttl: Duration::from_secs(300),
            http_allowed_cidrs: Vec::new(),
            crypto_key_scopes: BTreeMap::new(),
        }
    }
}

impl LuaConfig {
    /// Engine settings with the built-in modules, variables from `env`.
    pub fn engine_settings(&self, env: EnvLookup) -> EngineSettings {
        EngineSettings {
            timeout: self.timeout,
            memory_limit_bytes: usize::try_from(self.memory_limit_mb)
                .unwrap_or(usize::MAX / (1024 * 1024))
                * 1024
                * 1024,
            templates: TemplateResolver::new(env, self.env_allowlist.clone()),
            modules: Vec::new(),
        }
    }

    /// The I/O modules — `kv` over `kv`, `http`, `crypto` with `keys` — configured from this
    /// section and the `HOWK_LUA_ALLOW_HOSTNAME_*` variables among `variables`.
    pub fn io_modules(
        &self,
        kv: Arc<dyn Kv>,
        keys: CryptoKeys,
        io: IoRuntime,
        variables: &[(String, String)],
    ) -> Result<Vec<Arc<dyn LuaModule>>, ModuleSetupError> {
        let http = HttpSettings {
            allowed_hosts: self.allowed_hosts.clone(),
            namespace_hosts: Default::default(),
            timeout: self.http_timeout,
            max_response_bytes: self.http_max_response_bytes,
            cache_enabled: self.http_cache_enabled,
            cache_ttl: self.http_cache_ttl,
            addresses: AddressPolicy::with_allowed(&self.http_allowed_cidrs)?,
        }
        .with_namespace_lists(variables.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        Ok(vec![
            Arc::new(KvModule::new(kv, self.kv_ttl_default, self.kv_timeout)),
            Arc::new(HttpModule::new(http, io).map_err(ModuleSetupError::HttpClient)?),
            Arc::new(CryptoModule::new(keys.with_scopes(&self.crypto_key_scopes))),
        ])
    }
}
