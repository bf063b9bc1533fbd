//! Running the Lua engine with its I/O modules against the real services, as the delivery stage
//! will: off the reactor (a blocking-pool thread), with module I/O on the test's runtime.

use std::sync::Arc;

use howk_processor::lua::modules::crypto::CryptoKeys;
use howk_processor::lua::modules::io::IoRuntime;
use howk_processor::lua::modules::kv::{Kv, RedisConfig, RedisKv};
use howk_processor::lua::pool::OwnedInput;
use howk_processor::lua::{
    EngineSettings, LuaConfig, LuaEngine, PreviousError, Script, ScriptError, TransformedRequest,
};

/// Lua settings for tests: loopback reachable (explicit CIDR), 127.0.0.1 allowlisted.
pub fn test_lua_config() -> LuaConfig {
    LuaConfig {
        allowed_hosts: vec!["127.0.0.1".into()],
        http_allowed_cidrs: vec!["127.0.0.0/8".into()],
        ..LuaConfig::default()
    }
}

/// A Redis kv on `url`'s server.
pub fn redis_kv(url: &str) -> Arc<dyn Kv> {
    let addr = url.trim_start_matches("redis://").trim_end_matches('/');
    let config = RedisConfig {
        addr: addr.to_owned(),
        ..RedisConfig::default()
    };
    Arc::new(RedisKv::new(&config, IoRuntime::current()).expect("redis kv"))
}

/// Engine settings with kv, http and crypto configured from `config`.
pub fn engine_settings(config: &LuaConfig, kv: Arc<dyn Kv>) -> EngineSettings {
    let mut settings = config.engine_settings(Arc::new(|_| None));
    settings.modules = config
        .io_modules(kv, CryptoKeys::default(), IoRuntime::current(), &[])
        .expect("modules");
    settings
}

/// A webhook as a script sees it.
#[derive(Clone)]
pub struct Webhook {
    pub payload: Vec<u8>,
    pub config_id: String,
    pub attempt: u32,
    pub previous_error: Option<PreviousError>,
}

impl Webhook {
    pub fn for_config(config_id: &str) -> Self {
        Self {
            payload: b"{}".to_vec(),
            config_id: config_id.to_owned(),
            attempt: 0,
            previous_error: None,
        }
    }
}

impl Webhook {
    /// The owned input the engine pool carries.
    pub fn owned_input(&self) -> OwnedInput {
        OwnedInput {
            payload: self.payload.clone().into(),
            headers: Vec::new(),
            webhook_id: "wh_01JTESTWEBHOOK0000000000000".into(),
            config_id: self.config_id.clone(),
            attempt: self.attempt,
            max_attempts: 20,
            created_at: "2026-11-26T09:30:00Z".into(),
            previous_error: self.previous_error.clone(),
        }
    }
}

/// Runs `code` on `webhook` with a fresh engine on a blocking thread.
pub async fn run(
    settings: &EngineSettings,
    code: &str,
    webhook: &Webhook,
) -> Result<TransformedRequest, ScriptError> {
    let (settings, script, input) = (
        settings.clone(),
        Script::new(code, None),
        webhook.owned_input(),
    );
    tokio::task::spawn_blocking(move || {
        LuaEngine::new(settings).execute(&script, &input.as_input())
    })
    .await
    .expect("engine thread")
}

/// The body a successful script set, as text.
pub async fn body(settings: &EngineSettings, code: &str, webhook: &Webhook) -> String {
    let request = run(settings, code, webhook)
        .await
        .unwrap_or_else(|error| panic!("script failed: {error}"));
    String::from_utf8(request.body.unwrap_or_default()).unwrap()
}
