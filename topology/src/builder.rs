//! Wiring: which processor runs for which input topic, and the runner that keeps the stream
//! thread going. Read top to bottom, it is the topology of ARCHITECTURE.md.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::log::{Log, ReaderFactory, TopicPartition};
use crate::processor::{CompletionSender, Processor, TaskError};
use crate::stage::deliver::{DeliverProcessor, DeliverShared};
use crate::stage::ingest::IngestProcessor;
use crate::stage::retry::RetryProcessor;
use crate::stage::status::{StatusProcessor, StatusStores};
use crate::stage::{StageSettings, Topics};
use crate::stream_thread::{self, StreamConfig, TaskFactory, ThreadError};

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
) -> Result<(), ThreadError> {
    let mut backoff = Duration::from_millis(500);
    loop {
        let max_in_flight = stages.deliver.max_in_flight;
        match stream_thread::run(log, stages, config, max_in_flight, shutdown) {
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
