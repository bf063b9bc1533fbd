//! `howk run` (every stage on Kafka, `kv` on Redis) and `howk dev` (the same topology on the
//! embedded log under the data dir, `kv` in process, loopback endpoints allowed, `--dry` logs
//! instead of sending): builds the script engines, the delivery client, the scripts table and
//! the stages from configuration, then runs the stream thread until SIGINT/SIGTERM.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::Context as _;
use howk_processor::delivery::client::DeliveryClient;
use howk_processor::lua::modules::crypto::CryptoKeys;
use howk_processor::lua::modules::io::IoRuntime;
use howk_processor::lua::modules::kv::{Kv, MemoryKv, RedisKv};
use howk_processor::lua::pool::EnginePool;
use howk_processor::lua::template::{TemplateResolver, process_env};
use howk_topology::builder::{Engines, TopologyConfig, start};
use howk_topology::log::Log;
use howk_topology::log::embedded::EmbeddedLog;
use howk_topology::log::kafka::KafkaLog;
use howk_topology::topics::catalogue;

use crate::config::HowkConfig;

/// Where the topology runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Kafka,
    Dev { dry: bool },
}

/// Jobs waiting for a script engine thread, per thread: enough to keep them busy while the
/// stream thread is between polls, small enough that a stuck engine shows up as backpressure.
const SCRIPT_QUEUE_PER_THREAD: usize = 64;

/// Loopback ranges `howk dev` lets endpoints use.
const DEV_ALLOWED_CIDRS: [&str; 2] = ["127.0.0.0/8", "::1/128"];

pub async fn run(config: HowkConfig, mode: Mode) -> anyhow::Result<()> {
    let engines = engines(&config, mode)?;
    match mode {
        Mode::Kafka => {
            let log = KafkaLog::new(config.kafka.clone());
            check_topics(&log, &config)?;
            run_on(Arc::new(log), &config, engines).await
        }
        Mode::Dev { .. } => {
            let dir = config.processing.data_dir.join("log");
            let log = EmbeddedLog::open(Some(&dir), &catalogue(&config.kafka))
                .with_context(|| format!("cannot open the embedded log at {}", dir.display()))?;
            tracing::info!(dir = %dir.display(), "dev mode: embedded log, in-process kv");
            run_on(Arc::new(log), &config, engines).await
        }
    }
}

/// Starts the topology (off the reactor: it waits for the scripts table) and runs it until
/// SIGINT/SIGTERM.
async fn run_on<L: Log>(log: Arc<L>, config: &HowkConfig, engines: Engines) -> anyhow::Result<()> {
    let handle = tokio::runtime::Handle::current();
    let topology = topology_config(config);
    let running =
        tokio::task::spawn_blocking(move || start(log, topology, engines, handle)).await??;
    let shutdown = running.shutdown_flag();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown requested");
        shutdown.store(true, Ordering::Relaxed);
    });
    Ok(tokio::task::spawn_blocking(move || running.wait()).await??)
}

async fn wait_for_signal() {
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async {
            match terminate.as_mut() {
                Some(signal) => { signal.recv().await; }
                None => std::future::pending::<()>().await,
            }
        } => {}
    }
}

/// Fails with a precise message when the broker is down or the topics are missing.
fn check_topics(log: &KafkaLog, config: &HowkConfig) -> anyhow::Result<()> {
    let names = &config.kafka.topics;
    for topic in [
        &names.pending,
        &names.scripts,
        &names.delivery,
        &names.retry,
        &names.results,
    ] {
        log.partitions(topic).with_context(|| {
            format!(
                "topic {topic} is not available on {} (is the broker up? create the topics with \
                 `howk topics create`)",
                config.kafka.brokers
            )
        })?;
    }
    Ok(())
}

/// The topology's sections of the configuration.
pub fn topology_config(config: &HowkConfig) -> TopologyConfig {
    TopologyConfig {
        kafka: config.kafka.clone(),
        processing: config.processing.clone(),
        scripts: config.scripts.clone(),
        idempotency: config.idempotency.clone(),
        dlq: config.dlq.clone(),
        retry: config.retry.clone(),
        circuit_breaker: config.circuit_breaker.clone(),
        max_in_flight: config.delivery.max_in_flight,
    }
}

/// Script engines with their modules (`kv` on Redis, or in process for dev) and the delivery
/// client (dev also allows loopback endpoints). Call inside the runtime.
pub fn engines(config: &HowkConfig, mode: Mode) -> anyhow::Result<Engines> {
    let handle = tokio::runtime::Handle::current();
    let pool = if config.lua.enabled {
        let variables: Vec<(String, String)> = std::env::vars().collect();
        let keys = CryptoKeys::from_env(variables.iter().map(|(k, v)| (k.as_str(), v.as_str())))?;
        let io = IoRuntime::new(handle);
        let kv: Arc<dyn Kv> = match mode {
            Mode::Kafka => Arc::new(RedisKv::new(&config.redis, io.clone())?),
            Mode::Dev { .. } => Arc::new(MemoryKv::default()),
        };
        let mut settings = config.lua.engine_settings(process_env());
        settings.modules = config.lua.io_modules(kv, keys, io, &variables)?;
        let threads = config.processing.script_threads();
        Some(EnginePool::start(
            settings,
            threads,
            threads * SCRIPT_QUEUE_PER_THREAD,
        ))
    } else {
        None
    };
    let mut delivery = config.delivery.clone();
    if matches!(mode, Mode::Dev { .. }) {
        delivery
            .allowed_cidrs
            .extend(DEV_ALLOWED_CIDRS.iter().map(|c| c.to_string()));
    }
    let templates = TemplateResolver::new(process_env(), config.lua.env_allowlist.clone());
    let mut client = DeliveryClient::new(&delivery, templates)?;
    if let Mode::Dev { dry: true } = mode {
        client = client.dry_run();
    }
    Ok(Engines { pool, client })
}
