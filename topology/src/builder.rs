//! Wiring: which processor runs for which input topic, and [`start`], which builds the scripts
//! table and the stages from configuration and runs the stream thread (restarting it after a
//! failure) until stopped. Read top to bottom, it is the topology of ARCHITECTURE.md. `howk run`,
//! `howk dev`, `howk bench` and the embedded-log tests all start the topology here.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use howk_processor::delivery::client::{DeliveryClient, DeliveryConfig};
use howk_processor::delivery::decide::DecideConfig;
use howk_processor::lua::pool::EnginePool;
use howk_processor::policy::circuit::CircuitBreakerConfig;
use howk_processor::policy::retry::RetryConfig;

use crate::config::{
    DlqConfig, IdempotencyConfig, KafkaConfig, ProcessingConfig, ScriptsConfig, StatusConfig,
};
use crate::log::{Log, LogError, ReaderFactory, TopicPartition, TopicReader, pooled_readers};
use crate::processor::{CompletionSender, Processor, TaskError};
use crate::scripts_table::{LoaderConfig, ScriptsTable, TableError, spawn_loader};
use crate::stage::deliver::{DeliverLimits, DeliverProcessor, DeliverShared};
use crate::stage::ingest::IngestProcessor;
use crate::stage::retry::RetryProcessor;
use crate::stage::status::{StatusProcessor, StatusStores};
use crate::stage::{StageSettings, Topics};
use crate::stream_thread::{self, StreamConfig, TaskFactory, ThreadError};

/// The configuration sections the topology reads.
#[derive(Debug, Clone, Default)]
pub struct TopologyConfig {
    pub kafka: KafkaConfig,
    pub processing: ProcessingConfig,
    pub scripts: ScriptsConfig,
    pub idempotency: IdempotencyConfig,
    pub status: StatusConfig,
    pub dlq: DlqConfig,
    pub retry: RetryConfig,
    pub circuit_breaker: CircuitBreakerConfig,
    /// `delivery.*`: the fairness settings (the client takes the rest).
    pub delivery: DeliveryConfig,
}

/// What runs the attempts: script engines (`None` when Lua is disabled) and the HTTP client.
pub struct Engines {
    pub pool: Option<Arc<EnginePool>>,
    pub client: DeliveryClient,
}

/// How long the scripts table may take to catch up at start.
pub const SCRIPTS_READY_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("scripts table")]
    Table(#[from] TableError),
    #[error("the scripts table did not catch up with {topic} within {timeout:?}")]
    TableNotReady { topic: String, timeout: Duration },
}

/// A running topology: its queryable state and its thread.
pub struct RunningTopology {
    pub scripts: ScriptsTable,
    pub status: StatusStores,
    /// Set once the stream thread has created (restored) the tasks of its assignment.
    pub tasks_ready: Arc<AtomicBool>,
    shutdown: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Result<(), ThreadError>>,
    loader: std::thread::JoinHandle<Result<(), TableError>>,
}

impl RunningTopology {
    /// A flag that stops the topology when set (signal handlers set it).
    pub fn shutdown_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.shutdown)
    }

    /// Waits for the thread to end (after the shutdown flag is set, or a fatal error).
    pub fn wait(self) -> Result<(), ThreadError> {
        let result = self.thread.join().unwrap_or_else(|_| {
            Err(ThreadError::Log(LogError::Embedded(
                "the stream thread panicked".into(),
            )))
        });
        self.scripts.stop();
        match self.loader.join() {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::warn!(error = %error, "scripts loader stopped with an error")
            }
            Err(_) => tracing::warn!("scripts loader panicked"),
        }
        result
    }

    /// Drains, commits, closes every task cleanly and returns.
    pub fn stop(self) -> Result<(), ThreadError> {
        self.shutdown.store(true, Ordering::Relaxed);
        self.wait()
    }
}

/// Builds the scripts table and the stages and starts the stream thread. Blocks until the
/// scripts table has caught up: call it off the async reactor.
pub fn start<L: Log>(
    log: Arc<L>,
    config: TopologyConfig,
    engines: Engines,
    runtime: tokio::runtime::Handle,
) -> Result<RunningTopology, StartError> {
    let processing = &config.processing;
    let data_dir: PathBuf = processing.data_dir.clone();
    let topics = Topics::new(&config.kafka.topics);

    // Scripts: the table on every instance, caught up before any webhook is transformed.
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
        let _ = loader.join();
        return Err(StartError::TableNotReady {
            topic: topics.scripts.to_string(),
            timeout: SCRIPTS_READY_TIMEOUT,
        });
    }

    let settings = StageSettings {
        topics: Arc::new(topics),
        data_dir: data_dir.join("tasks"),
        max_record_bytes: processing.max_record_bytes,
        default_max_attempts: config.retry.max_attempts,
        idempotency_ttl: config.idempotency.ttl,
        status_retention: config.status.retention,
    };
    let reader_log = Arc::clone(&log);
    let readers: ReaderFactory = pooled_readers(move || {
        reader_log
            .reader()
            .map(|reader| Box::new(reader) as Box<dyn TopicReader>)
    });
    let status = StatusStores::default();
    let stages = Stages {
        deliver: Arc::new(DeliverShared {
            settings: settings.clone(),
            scripts: scripts.clone(),
            pool: engines.pool,
            client: engines.client,
            decide: DecideConfig {
                retry: config.retry.clone(),
                include_response_body: config.dlq.include_response_body,
            },
            circuit: config.circuit_breaker.clone(),
            fence_timeout: config.scripts.fence_timeout,
            limits: DeliverLimits::new(&config.delivery),
            runtime,
        }),
        settings,
        status: status.clone(),
        readers,
    };
    let stream = StreamConfig {
        group: processing.group.clone(),
        instance_id: processing.instance_id(),
        commit_interval: processing.commit_interval,
        punctuate_interval: Duration::from_millis(100),
        shutdown_grace: processing.shutdown_grace,
        dead_letter_topic: Arc::from(config.kafka.topics.deadletter.as_str()),
    };
    tracing::info!(group = %stream.group, instance_id = %stream.instance_id, "processing");
    let shutdown = Arc::new(AtomicBool::new(false));
    let tasks_ready = Arc::new(AtomicBool::new(false));
    let thread = {
        let (shutdown, tasks_ready) = (Arc::clone(&shutdown), Arc::clone(&tasks_ready));
        std::thread::Builder::new()
            .name("howk-stream".into())
            .spawn(move || run_until_shutdown(&*log, &stages, &stream, &shutdown, &tasks_ready))
            .expect("spawn the stream thread")
    };
    Ok(RunningTopology {
        scripts,
        status,
        tasks_ready,
        shutdown,
        thread,
        loader,
    })
}

/// The four stages, made per assigned partition.
pub struct Stages {
    pub settings: StageSettings,
    pub deliver: Arc<DeliverShared>,
    pub status: StatusStores,
    pub readers: ReaderFactory,
}

impl TaskFactory for Stages {
    fn topics(&self) -> Vec<Arc<str>> {
        let topics: &Topics = &self.settings.topics;
        vec![
            topics.pending.clone(),
            topics.delivery.clone(),
            topics.retry.clone(),
            topics.results.clone(),
        ]
    }

    fn create(
        &self,
        partition: &TopicPartition,
        committed: Option<i64>,
        completions: CompletionSender,
    ) -> Result<Box<dyn Processor>, TaskError> {
        let topics = &self.settings.topics;
        let settings = self.settings.clone();
        let readers = Arc::clone(&self.readers);
        let partition = partition.clone();
        let topic = &*partition.topic;
        // Ingest: pending (key config_id) → accepted, re-keyed by endpoint.
        if topic == &*topics.pending {
            return Ok(Box::new(IngestProcessor::open(
                settings, partition, readers,
            )?));
        }
        // Deliver: delivery (key endpoint) → circuit, script, HTTP → results/retry/deadletter.
        if topic == &*topics.delivery {
            return Ok(Box::new(DeliverProcessor::open(
                Arc::clone(&self.deliver),
                partition,
                readers,
                completions,
            )?));
        }
        // Retry: retry (key webhook_id) → timers → delivery when due.
        if topic == &*topics.retry {
            return Ok(Box::new(RetryProcessor::open(
                settings, partition, readers,
            )?));
        }
        // Status: results (key webhook_id) → status store and stats.
        if topic == &*topics.results {
            return Ok(Box::new(StatusProcessor::open(
                settings,
                partition,
                committed,
                self.status.clone(),
                readers,
            )?));
        }
        Err(TaskError::Other(format!("no stage reads topic {topic}")))
    }
}

/// Runs the stream thread until `shutdown`, restarting it after a failure: the log is the
/// source of truth, so a restarted thread rebuilds whatever it had not committed.
pub fn run_until_shutdown<L: Log>(
    log: &L,
    stages: &Stages,
    config: &StreamConfig,
    shutdown: &AtomicBool,
    tasks_ready: &AtomicBool,
) -> Result<(), ThreadError> {
    let mut backoff = Duration::from_millis(500);
    loop {
        let max_in_flight = stages.deliver.limits.max_in_flight;
        match stream_thread::run(log, stages, config, max_in_flight, shutdown, tasks_ready) {
            Ok(()) => return Ok(()),
            Err(error) if !shutdown.load(Ordering::Relaxed) => {
                tracing::error!(error = %error, source = ?std::error::Error::source(&error),
                    "stream thread failed; restarting in {backoff:?}");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
            Err(error) => return Err(error),
        }
    }
}
