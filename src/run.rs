//! `howk run` (every stage on Kafka, `kv` on Redis), `howk dev` (the same topology on the
//! embedded log under the data dir, `kv` in process, loopback endpoints allowed, `--dry` logs
//! instead of sending) and `howk api` (the REST API alone, on Kafka): builds the script engines,
//! the delivery client, the scripts table and the stages from configuration, serves the API,
//! and runs until SIGINT/SIGTERM.
//!
//! Shutdown order: the API stops accepting and finishes in-flight requests, its producer is
//! flushed, then the stream thread drains, commits and closes its stores.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::Context as _;
use howk_api::ingress::{EmbeddedIngress, Ingress, KafkaIngress};
use howk_api::{AppState, LocalTopology};
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
use howk_topology::scripts_table::{LoaderConfig, ScriptsTable, spawn_loader};
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

pub async fn run(config: HowkConfig, mode: Mode, serve_api: bool) -> anyhow::Result<()> {
    if mode == Mode::Kafka {
        if serve_api {
            require_admin_auth(&config)?;
        }
        warn_open_env(&config);
    }
    let engines = engines(&config, mode)?;
    match mode {
        Mode::Kafka => {
            let log = Arc::new(KafkaLog::new(config.kafka.clone()));
            check_topics(&log, &config)?;
            let ingress = Arc::new(KafkaIngress::new(Arc::clone(&log)));
            let result = run_on(
                log,
                &config,
                engines,
                serve_api.then(|| ingress.clone() as _),
            )
            .await;
            howk_api::ingress::flush(&ingress);
            result
        }
        Mode::Dev { .. } => {
            let dir = config.processing.data_dir.join("log");
            let log = EmbeddedLog::open(Some(&dir), &catalogue(&config.kafka))
                .with_context(|| format!("cannot open the embedded log at {}", dir.display()))?;
            tracing::info!(dir = %dir.display(), "dev mode: embedded log, in-process kv");
            let log = Arc::new(log);
            let ingress = Arc::new(EmbeddedIngress(Arc::clone(&log)));
            run_on(log, &config, engines, serve_api.then_some(ingress as _)).await
        }
    }
}

/// Starts the topology (off the reactor: it waits for the scripts table), serves the API, and
/// runs until SIGINT/SIGTERM.
async fn run_on<L: Log>(
    log: Arc<L>,
    config: &HowkConfig,
    engines: Engines,
    ingress: Option<Arc<dyn Ingress>>,
) -> anyhow::Result<()> {
    let handle = tokio::runtime::Handle::current();
    let topology = topology_config(config);
    let pool = engines.pool.clone();
    let replay_log = Arc::clone(&log);
    let running =
        tokio::task::spawn_blocking(move || start(log, topology, engines, handle)).await??;
    let api = match ingress {
        Some(ingress) => {
            let replays = replay_jobs(replay_log, config, running.scripts.clone()).await;
            let mut state = api_state(
                config,
                ingress,
                running.scripts.clone(),
                Some(LocalTopology {
                    status: running.status.clone(),
                    tasks_ready: Arc::clone(&running.tasks_ready),
                }),
                pool,
            );
            state.replays = Some(Arc::new(replays));
            Some(spawn_api(config, state).await?)
        }
        None => None,
    };
    wait_for_signal().await;
    tracing::info!("shutdown requested");
    if let Some((stop, server)) = api {
        let _ = stop.send(());
        server.await??;
    }
    running.shutdown_flag().store(true, Ordering::Relaxed);
    Ok(tokio::task::spawn_blocking(move || running.wait()).await??)
}

/// `howk api`: the REST API alone on Kafka, with its own copy of the scripts table.
pub async fn api_only(config: HowkConfig) -> anyhow::Result<()> {
    require_admin_auth(&config)?;
    warn_open_env(&config);
    let engines = engines(&config, Mode::Kafka)?;
    let log = Arc::new(KafkaLog::new(config.kafka.clone()));
    check_topics(&log, &config)?;
    let scripts = ScriptsTable::in_memory();
    let loader = spawn_loader(
        Arc::clone(&log),
        scripts.clone(),
        LoaderConfig {
            topic: Arc::from(config.kafka.topics.scripts.as_str()),
            checkpoint: None,
        },
    )?;
    let ingress = Arc::new(KafkaIngress::new(log));
    let state = api_state(
        &config,
        ingress.clone(),
        scripts.clone(),
        None,
        engines.pool,
    );
    let (stop, server) = spawn_api(&config, state).await?;
    wait_for_signal().await;
    tracing::info!("shutdown requested");
    let _ = stop.send(());
    server.await??;
    howk_api::ingress::flush(&ingress);
    scripts.stop();
    let _ = tokio::task::spawn_blocking(move || loader.join()).await;
    Ok(())
}

/// Script routes can read and replace every tenant's script and run any script against the
/// process's crypto keys: on Kafka they need `api.admin_token`, or an explicit opt-out.
pub fn require_admin_auth(config: &HowkConfig) -> anyhow::Result<()> {
    if config.api.admin_token.is_none() && !config.api.allow_unauthenticated_admin {
        anyhow::bail!(
            "refusing to serve the script routes without authentication: set api.admin_token \
             (HOWK_API_ADMIN_TOKEN), or api.allow_unauthenticated_admin=true \
             (HOWK_API_ALLOW_UNAUTHENTICATED_ADMIN) if the API is reachable only by operators"
        );
    }
    if config.api.admin_token.is_none() {
        tracing::warn!("script routes are open: api.allow_unauthenticated_admin is set");
    }
    Ok(())
}

/// Said once at start: without `lua.env_allowlist`, `${VAR}` in a script_config may resolve
/// any environment variable of the process but `HOWK_*`.
fn warn_open_env(config: &HowkConfig) {
    if config.lua.env_allowlist.is_empty() {
        tracing::warn!(
            "lua.env_allowlist is empty: scripts' ${{VAR}} templates may resolve any \
             environment variable not starting with HOWK_; list the ones tenants may use"
        );
    }
}

/// The replay jobs this process runs for the admin API; the re-drives it owned that were still
/// running resume now.
async fn replay_jobs<L: Log>(
    log: Arc<L>,
    config: &HowkConfig,
    scripts: ScriptsTable,
) -> Arc<howk_topology::replay::jobs::ReplayJobs<L>> {
    let jobs = howk_topology::replay::jobs::ReplayJobs::new(
        log,
        config.kafka.clone(),
        scripts,
        config.lua.engine_settings(process_env()),
        config.processing.max_record_bytes,
        config.processing.instance_id.clone(),
        config.replay.max_rate,
    );
    let resuming = Arc::clone(&jobs);
    match tokio::task::spawn_blocking(move || resuming.resume_owned()).await {
        Ok(Ok(0)) => {}
        Ok(Ok(resumed)) => tracing::info!(resumed, "replay jobs resumed"),
        Ok(Err(error)) => tracing::error!(%error, "cannot read howk.replays to resume jobs"),
        Err(error) => tracing::error!(%error, "resuming replay jobs panicked"),
    }
    jobs
}

fn api_state(
    config: &HowkConfig,
    ingress: Arc<dyn Ingress>,
    scripts: ScriptsTable,
    topology: Option<LocalTopology>,
    pool: Option<Arc<EnginePool>>,
) -> AppState {
    let transformers = howk_api::transformers::Transformers::load(config.transformer.clone());
    transformers.spawn_reloaders();
    AppState {
        config: Arc::new(config.api.clone()),
        ingress,
        scripts,
        topology,
        pool,
        engine_settings: config.lua.engine_settings(process_env()),
        topics: howk_api::Topics {
            pending: Arc::from(config.kafka.topics.pending.as_str()),
            scripts: Arc::from(config.kafka.topics.scripts.as_str()),
        },
        max_record_bytes: config.processing.max_record_bytes,
        default_max_attempts: config.retry.max_attempts,
        transformers,
        replays: None,
    }
}

type ApiServer = (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<std::io::Result<()>>,
);

/// Binds `api.host:api.port` and serves until told to stop.
async fn spawn_api(config: &HowkConfig, state: AppState) -> anyhow::Result<ApiServer> {
    let address = format!("{}:{}", config.api.host, config.api.port);
    let listener = tokio::net::TcpListener::bind(&address)
        .await
        .with_context(|| format!("cannot listen on {address} (api.host, api.port)"))?;
    tracing::info!(address = %listener.local_addr()?, "REST API listening");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(howk_api::serve(listener, state, async move {
        let _ = stopped.await;
    }));
    Ok((stop, server))
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
        status: config.status.clone(),
        dlq: config.dlq.clone(),
        retry: config.retry.clone(),
        circuit_breaker: config.circuit_breaker.clone(),
        delivery: config.delivery.clone(),
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
