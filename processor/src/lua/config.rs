//! The `lua` configuration section (SPEC §8): whether scripts run, and their limits.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::engine::EngineSettings;
use super::template::{EnvLookup, TemplateResolver};

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
}

impl Default for LuaConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            timeout: Duration::from_millis(500),
            memory_limit_mb: 50,
            env_allowlist: Vec::new(),
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
}
