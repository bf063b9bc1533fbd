//! `howk run` (every stage on Kafka, `kv` on Redis) and `howk dev` (the same topology on the
//! embedded log under the data dir, `kv` in process, loopback endpoints allowed, `--dry` logs
//! instead of sending): builds the script engines, the delivery client, the scripts table and
//! the stages from configuration, then runs the stream thread until SIGINT/SIGTERM.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use howk_processor::delivery::client::DeliveryClient;
use howk_processor::delivery::decide::DecideConfig;
use howk_processor::lua::modules::crypto::CryptoKeys;
use howk_processor::lua::modules::io::IoRuntime;
use howk_processor::lua::modules::kv::{Kv, MemoryKv, RedisKv};
use howk_processor::lua::pool::EnginePool;
use howk_processor::lua::template::{TemplateResolver, process_env};
use howk_topology::builder::{Stages, run_until_shutdown};
use howk_topology::log::embedded::EmbeddedLog;
use howk_topology::log::kafka::KafkaLog;
use howk_topology::log::{Log, ReaderFactory, TopicReader};
use howk_topology::scripts_table::{LoaderConfig, ScriptsTable, spawn_loader};
use howk_topology::stage::deliver::DeliverShared;
use howk_topology::stage::status::StatusStores;
use howk_topology::stage::{StageSettings, Topics};
use howk_topology::stream_thread::StreamConfig;
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

/// How long the scripts table may take to catch up at start before `run` gives up.
const SCRIPTS_READY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// Loopback ranges `howk dev` lets endpoints use.
const DEV_ALLOWED_CIDRS: [&str; 2] = ["127.0.0.0/8", "::1/128"];

pub async fn run(config: HowkConfig, mode: Mode) -> anyhow::Result<()> {
    let shutdown = Arc::new(AtomicBool::new(false));
    {
        let shutdown = Arc::clone(&shutdown);
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutdown requested");
            shutdown.store(true, Ordering::Relaxed);
        });
    }
    let handle = tokio::runtime::Handle::current();
    match mode {
        Mode::Kafka => {
            let log = KafkaLog::new(config.kafka.clone());
            check_topics(&log, &config)?;
            let log = Arc::new(log);
            tokio::task::spawn_blocking(move || run_on(log, config, mode, handle, shutdown)).await?
        }
        Mode::Dev { .. } => {
            let dir = config.processing.data_dir.join("log");
            let log = EmbeddedLog::open(Some(&dir), &catalogue(&config.kafka))
                .with_context(|| format!("cannot open the embedded log at {}", dir.display()))?;
            tracing::info!(dir = %dir.display(), "dev mode: embedded log, in-process kv");
            let log = Arc::new(log);
            tokio::task::spawn_blocking(move || run_on(log, config, mode, handle, shutdown)).await?
        }
    }
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

/// Builds everything and runs the stream thread; blocking.
fn run_on<L: Log>(
    log: Arc<L>,
    config: HowkConfig,
    mode: Mode,
    handle: tokio::runtime::Handle,
    shutdown: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let processing = &config.processing;
    let data_dir: PathBuf = processing.data_dir.clone();
    let topics = Topics::new(&config.kafka.topics);

    // Scripts: the table on every instance, loaded before any webhook is transformed.
    let scripts = ScriptsTable::open(&data_dir.join("scripts"))?;
    let loader = spawn_loader(
        Arc::clone(&log),
        scripts.clone(),
        LoaderConfig {
            topic: topics.scripts.clone(),
            checkpoint: Some(data_dir.join("scripts.checkpoint")),
        },
    )?;
    if !scripts.wait_ready_blocking(SCRIPTS_READY_TIMEOUT) {
        scripts.stop();
        anyhow::bail!(
            "the scripts table did not catch up with {} within {SCRIPTS_READY_TIMEOUT:?}",
            topics.scripts
        );
    }

    // Script engines with their modules.
    let pool = if config.lua.enabled {
        let variables: Vec<(String, String)> = std::env::vars().collect();
        let keys = CryptoKeys::from_env(variables.iter().map(|(k, v)| (k.as_str(), v.as_str())))?;
        let io = IoRuntime::new(handle.clone());
        let kv: Arc<dyn Kv> = match mode {
            Mode::Kafka => Arc::new(RedisKv::new(&config.redis, io.clone())?),
            Mode::Dev { .. } => Arc::new(MemoryKv::default()),
        };
        let mut settings = config.lua.engine_settings(process_env());
        settings.modules = config.lua.io_modules(kv, keys, io, &variables)?;
        let threads = processing.script_threads();
        Some(EnginePool::start(
            settings,
            threads,
            threads * SCRIPT_QUEUE_PER_THREAD,
        ))
    } else {
        None
    };

    // Delivery: the HTTP client (dev allows loopback endpoints).
    let mut delivery = config.delivery.clone();
    if matches!(mode, Mode::Dev { .. }) {
        delivery
            .allowed_cidrs
            .extend(DEV_ALLOWED_CIDRS.iter().map(|c| c.to_string()));
    }
    let templates = TemplateResolver::new(process_env(), config.lua.env_allowlist.clone());
    let mut client = {
        let _entered = handle.enter();
        DeliveryClient::new(&delivery, templates)?
    };
    if let Mode::Dev { dry: true } = mode {
        client = client.dry_run();
    }

    let settings = StageSettings {
        topics: topics.clone(),
        data_dir: data_dir.join("tasks"),
        max_record_bytes: processing.max_record_bytes,
        default_max_attempts: config.retry.max_attempts,
        idempotency_ttl: config.idempotency.ttl,
    };
    let reader_log = Arc::clone(&log);
    let readers: ReaderFactory = Arc::new(move || {
        reader_log
            .reader()
            .map(|reader| Box::new(reader) as Box<dyn TopicReader>)
    });
    let stages = Stages {
        deliver: Arc::new(DeliverShared {
            settings: settings.clone(),
            scripts: scripts.clone(),
            pool,
            client,
            decide: DecideConfig {
                retry: config.retry.clone(),
                include_response_body: config.dlq.include_response_body,
            },
            circuit: config.circuit_breaker.clone(),
            fence_timeout: config.scripts.fence_timeout,
            max_in_flight: delivery.max_in_flight,
            runtime: handle,
        }),
        settings,
        status: StatusStores::default(),
        readers,
    };
    let stream = StreamConfig {
        group: processing.group.clone(),
        instance_id: processing.instance_id(),
        commit_interval: processing.commit_interval,
        punctuate_interval: std::time::Duration::from_millis(100),
        shutdown_grace: processing.shutdown_grace,
    };
    tracing::info!(group = %stream.group, instance_id = %stream.instance_id, "processing");
    let result = run_until_shutdown(&*log, &stages, &stream, &shutdown);
    scripts.stop();
    match loader.join() {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::warn!(error = %error, "scripts loader stopped with an error"),
        Err(_) => tracing::warn!("scripts loader panicked"),
    }
    Ok(result?)
}
