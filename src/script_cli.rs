//! `howk script test FILE --payload JSON [--header K=V]... [--config JSON] [--attempt N]`: runs a
//! delivery script on a sample webhook with the real engine, modules and limits, and prints the
//! transformed request (or the error) as the API's test endpoint would. Exits 1 when the script
//! fails, so it can gate a deploy.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Subcommand;
use howk_processor::lua::modules::LuaModule;
use howk_processor::lua::modules::crypto::CryptoKeys;
use howk_processor::lua::modules::io::IoRuntime;
use howk_processor::lua::modules::kv::{Kv, MemoryKv, RedisKv};
use howk_processor::lua::{
    LuaConfig, LuaEngine, PreviousError, Script, ScriptInput, ScriptMetadata, TestReport,
    template::process_env,
};

use crate::config::HowkConfig;

#[derive(Debug, Subcommand)]
pub enum ScriptCommand {
    /// Run FILE on a sample webhook and print the transformed request.
    Test {
        /// The Lua script.
        file: PathBuf,
        /// The webhook payload, sent to the script byte for byte.
        #[arg(long, default_value = "{}")]
        payload: String,
        /// A webhook header, `Name=value`; repeatable.
        #[arg(long = "header", value_name = "NAME=VALUE")]
        headers: Vec<String>,
        /// The script's `script_config`, a JSON object.
        #[arg(long)]
        config: Option<String>,
        /// The 0-based attempt; above 0 the script also sees a sample `previous_error`.
        #[arg(long, default_value_t = 0)]
        attempt: u32,
        /// The webhook's config_id.
        #[arg(long, default_value = "cli:test")]
        config_id: String,
        /// Where `kv` keeps its values: `memory` (this run only) or `redis` (`redis.addr`).
        #[arg(long, default_value = "memory", value_parser = ["memory", "redis"])]
        kv: String,
    },
}

/// Runs the command: modules are set up here, on the runtime; the engine runs on a blocking
/// thread, off the reactor, as in delivery.
pub async fn run(command: ScriptCommand, config: &HowkConfig) -> anyhow::Result<()> {
    let ScriptCommand::Test { kv, .. } = &command;
    let modules = modules(config, kv)?;
    let lua = config.lua.clone();
    tokio::task::spawn_blocking(move || test(command, &lua, modules)).await?
}

/// The I/O modules as configured, `kv` over the chosen store. Crypto keys are loaded (and
/// validated) here: a bad `HOWK_LUA_CRYPTO_*` stops the command with a message naming the
/// variable.
fn modules(config: &HowkConfig, kv: &str) -> anyhow::Result<Vec<Arc<dyn LuaModule>>> {
    let variables: Vec<(String, String)> = std::env::vars().collect();
    let keys = CryptoKeys::from_env(variables.iter().map(|(k, v)| (k.as_str(), v.as_str())))?;
    let io = IoRuntime::current();
    let store: Arc<dyn Kv> = match kv {
        "redis" => Arc::new(RedisKv::new(&config.redis, io.clone())?),
        _ => Arc::new(MemoryKv::default()),
    };
    Ok(config.lua.io_modules(store, keys, io, &variables)?)
}

fn test(
    command: ScriptCommand,
    lua: &LuaConfig,
    modules: Vec<Arc<dyn LuaModule>>,
) -> anyhow::Result<()> {
    let ScriptCommand::Test {
        file,
        payload,
        headers,
        config,
        attempt,
        config_id,
        kv: _,
    } = command;
    let code = std::fs::read_to_string(&file)
        .with_context(|| format!("cannot read script {}", file.display()))?;
    let headers = headers
        .iter()
        .map(|header| match header.split_once('=') {
            Some((name, value)) => Ok((name.to_owned(), value.to_owned())),
            None => bail!("--header {header:?} must be NAME=VALUE"),
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let config = config
        .map(|text| {
            let value: serde_json::Value =
                serde_json::from_str(&text).context("--config is not valid JSON")?;
            if !value.is_object() {
                bail!("--config must be a JSON object");
            }
            Ok(value)
        })
        .transpose()?;
    let previous_error = (attempt > 0).then(|| PreviousError {
        status_code: Some(503),
        error: "HTTP 503 Service Unavailable (sample)".to_owned(),
        attempt: attempt - 1,
    });

    let mut settings = lua.engine_settings(process_env());
    settings.modules = modules;
    let mut engine = LuaEngine::new(settings);
    let script = Script::new(code, config);
    let input = ScriptInput {
        payload: payload.as_bytes(),
        headers: &headers,
        metadata: ScriptMetadata {
            webhook_id: "wh_00000000000000000000000000",
            config_id: &config_id,
            attempt,
            max_attempts: 20,
            created_at: "2026-01-01T00:00:00Z",
        },
        previous_error: previous_error.as_ref(),
    };
    let start = Instant::now();
    let result = engine.execute(&script, &input);
    let report = TestReport::new(&result, payload.as_bytes(), start.elapsed());
    println!("{}", serde_json::to_string_pretty(&report)?);
    if !report.is_success() {
        std::process::exit(1);
    }
    Ok(())
}
