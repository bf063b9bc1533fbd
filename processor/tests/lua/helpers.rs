//! A webhook builder and an engine with test settings.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use howk_processor::lua::{
    LuaConfig, LuaEngine, PreviousError, Script, ScriptError, ScriptInput, ScriptMetadata,
    TransformedRequest,
};

/// An engine with the default limits and `vars` as its environment.
pub fn engine_with_env(vars: &[(&str, &str)]) -> LuaEngine {
    let vars: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    LuaEngine::new(
        LuaConfig::default().engine_settings(Arc::new(move |name| vars.get(name).cloned())),
    )
}

pub fn engine() -> LuaEngine {
    engine_with_env(&[])
}

/// An engine with a short timeout and a small memory limit, for the limit tests.
pub fn limited_engine(timeout: Duration, memory_limit_mb: u64) -> LuaEngine {
    let config = LuaConfig {
        timeout,
        memory_limit_mb,
        ..LuaConfig::default()
    };
    LuaEngine::new(config.engine_settings(Arc::new(|_| None)))
}

/// One webhook as a script sees it.
#[derive(Clone)]
pub struct Webhook {
    pub payload: Vec<u8>,
    pub headers: Vec<(String, String)>,
    pub webhook_id: String,
    pub config_id: String,
    pub attempt: u32,
    pub previous_error: Option<PreviousError>,
}

impl Default for Webhook {
    fn default() -> Self {
        Self {
            payload: br#"{"id":1}"#.to_vec(),
            headers: vec![("Content-Type".into(), "application/json".into())],
            webhook_id: "wh_01JTESTWEBHOOK0000000000000".into(),
            config_id: "music:10".into(),
            attempt: 0,
            previous_error: None,
        }
    }
}

impl Webhook {
    pub fn payload(payload: impl Into<Vec<u8>>) -> Self {
        Self {
            payload: payload.into(),
            ..Self::default()
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn input(&self) -> ScriptInput<'_> {
        ScriptInput {
            payload: &self.payload,
            headers: &self.headers,
            metadata: ScriptMetadata {
                webhook_id: &self.webhook_id,
                config_id: &self.config_id,
                attempt: self.attempt,
                max_attempts: 20,
                created_at: "2026-11-26T09:30:00Z",
            },
            previous_error: self.previous_error.as_ref(),
        }
    }
}

pub fn run_on(
    engine: &mut LuaEngine,
    code: &str,
    webhook: &Webhook,
) -> Result<TransformedRequest, ScriptError> {
    engine.execute(&Script::new(code, None), &webhook.input())
}

/// Runs `code` on the default webhook with a fresh default engine.
pub fn run(code: &str) -> Result<TransformedRequest, ScriptError> {
    run_on(&mut engine(), code, &Webhook::default())
}

/// Runs `code` and returns the body it set, as text.
pub fn body_of(code: &str) -> String {
    let request = run(code).unwrap_or_else(|error| panic!("script failed: {error}"));
    String::from_utf8(request.body.expect("script set request.body")).unwrap()
}

/// The value of a header in the final request.
pub fn header<'a>(request: &'a TransformedRequest, name: &str) -> Option<&'a str> {
    request
        .headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}
