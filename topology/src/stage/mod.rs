//! The stages of the topology (ARCHITECTURE.md), one processor each, in flow order:
//!
//! - [`ingest`]: `howk.pending` → validate, drop idempotency repeats, `accepted`, re-key by
//!   endpoint onto `howk.delivery`
//! - [`deliver`]: `howk.delivery` → circuit, scripts-table join, Lua, HTTP, classify → results,
//!   retry, dead letters
//! - [`retry`]: `howk.retry` → durable timers → back to `howk.delivery` when due
//! - [`status`]: `howk.results` → per-webhook status and minute stats, queryable
//!
//! [`StageContext`] is what every task of a stage shares: topic names, limits, the scripts
//! table, the delivery machinery.

pub mod deliver;
pub mod ingest;
pub mod retry;
pub mod status;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use howk_processor::record::{DeadLetter, DeliveryResult};

use crate::config::TopicNames;
use crate::log::{ReaderFactory, TopicPartition};
use crate::metrics::{ReasonLabel, metrics};
use crate::processor::{Context, TaskError};
use crate::restore::{OpenedStore, open_store};

/// Topic names as shared strings (cloned per output record without allocating).
#[derive(Debug, Clone)]
pub struct Topics {
    pub pending: Arc<str>,
    pub scripts: Arc<str>,
    pub delivery: Arc<str>,
    pub retry: Arc<str>,
    pub results: Arc<str>,
    pub deadletter: Arc<str>,
    pub idempotency_changelog: Arc<str>,
    pub circuit_changelog: Arc<str>,
    pub timers_changelog: Arc<str>,
}

impl Topics {
    pub fn new(names: &TopicNames) -> Self {
        Self {
            pending: Arc::from(names.pending.as_str()),
            scripts: Arc::from(names.scripts.as_str()),
            delivery: Arc::from(names.delivery.as_str()),
            retry: Arc::from(names.retry.as_str()),
            results: Arc::from(names.results.as_str()),
            deadletter: Arc::from(names.deadletter.as_str()),
            idempotency_changelog: Arc::from(names.changelog("idempotency").as_str()),
            circuit_changelog: Arc::from(names.changelog("circuit").as_str()),
            timers_changelog: Arc::from(names.changelog("timers").as_str()),
        }
    }
}

/// Settings shared by the stages.
#[derive(Debug, Clone)]
pub struct StageSettings {
    /// `status.retention`.
    pub status_retention: std::time::Duration,
    /// Shared: every task clones it per record it handles.
    pub topics: Arc<Topics>,
    /// Where task stores live: `<data_dir>/<store>/<partition>`.
    pub data_dir: PathBuf,
    /// Largest `howk.pending` value accepted.
    pub max_record_bytes: usize,
    /// `max_attempts` of a webhook that does not say.
    pub default_max_attempts: u32,
    /// How long an idempotency key suppresses repeats.
    pub idempotency_ttl: Duration,
}

impl StageSettings {
    pub fn store_dir(&self, store: &str, partition: i32) -> PathBuf {
        self.data_dir.join(store).join(partition.to_string())
    }
}

/// Opens the `store` of the task reading `partition`, restored from its changelog `topic` (same
/// partition number); returns it with its changelog partition.
pub(crate) fn open_task_store(
    settings: &StageSettings,
    store: &str,
    changelog_topic: &Arc<str>,
    partition: &TopicPartition,
    readers: &ReaderFactory,
) -> Result<(OpenedStore, TopicPartition), TaskError> {
    let changelog = TopicPartition {
        topic: Arc::clone(changelog_topic),
        partition: partition.partition,
    };
    let dir = settings.store_dir(store, partition.partition);
    let opened = open_store(&dir, Some(&changelog), readers()?.as_mut())?;
    tracing::info!(%partition, store, clean = opened.clean, restored = opened.restored_records,
        "task ready");
    Ok((opened, changelog))
}

/// Dead-letters an internal record (`howk.delivery`, `howk.retry`) that does not decode: a
/// format this build cannot read. Keyed by the record's key (a webhook id or endpoint).
pub(crate) fn dead_letter_undecodable(
    ctx: &mut Context<'_>,
    topics: &Topics,
    key: Option<&[u8]>,
    raw: &[u8],
    reason: String,
) {
    let id = key
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .unwrap_or_default();
    let letter = invalid_record_letter(raw, reason, ctx.now_ms);
    send_dead_letter(ctx, topics, &id, &letter);
}

/// Writes a result to `howk.results`, keyed by webhook id.
pub(crate) fn send_result(ctx: &mut Context<'_>, topics: &Topics, result: &DeliveryResult) {
    let value = serde_json::to_vec(result).expect("a DeliveryResult serializes");
    ctx.send(&topics.results, result.webhook_id.as_bytes(), value);
}

/// Writes a dead letter to `howk.deadletter`, keyed by webhook id.
pub(crate) fn send_dead_letter(
    ctx: &mut Context<'_>,
    topics: &Topics,
    webhook_id: &str,
    letter: &DeadLetter,
) {
    let value = serde_json::to_vec(letter).expect("a DeadLetter serializes");
    ctx.send(&topics.deadletter, webhook_id.as_bytes(), value);
}

/// A dead letter for a record that is not a valid webhook (or internal record, or an output
/// over the size budget), counted in `howk_dead_letters_total{reason="invalid_record"}`: every
/// one made is sent.
pub(crate) fn invalid_record_letter(raw: &[u8], reason: String, now_ms: i64) -> DeadLetter {
    metrics()
        .dead_letters
        .get_or_create(&ReasonLabel {
            reason: "invalid_record".into(),
        })
        .inc();
    DeadLetter {
        webhook: serde_json::value::to_raw_value(
            &howk_processor::record::outcome::redacted_raw_record(raw),
        )
        .expect("a JSON value serializes"),
        reason_type: howk_processor::record::ReasonType::InvalidRecord,
        reason,
        last_error: None,
        status_code: None,
        response_body: None,
        attempts: 0,
        time: howk_processor::delivery::decide::rfc3339(now_ms),
        origin: None,
    }
}

/// What the stages' unit tests share: an embedded log with every topic (one partition each),
/// readers on it, and small settings.
#[cfg(test)]
pub(crate) mod fixture {
    use std::path::Path;
    use std::sync::Arc;
    use std::time::Duration;

    use super::{StageSettings, Topics};
    use crate::config::KafkaConfig;
    use crate::log::embedded::EmbeddedLog;
    use crate::log::{Log, ReaderFactory, TopicReader};
    use crate::topics::catalogue;

    pub fn log() -> (Arc<EmbeddedLog>, ReaderFactory, KafkaConfig) {
        let kafka = KafkaConfig {
            partitions: 1,
            ..KafkaConfig::default()
        };
        let log = Arc::new(EmbeddedLog::open(None, &catalogue(&kafka)).unwrap());
        let readers: ReaderFactory = {
            let log = Arc::clone(&log);
            Arc::new(move || {
                log.reader()
                    .map(|reader| Box::new(reader) as Box<dyn TopicReader>)
            })
        };
        (log, readers, kafka)
    }

    pub fn settings(dir: &Path, kafka: &KafkaConfig) -> StageSettings {
        StageSettings {
            topics: Arc::new(Topics::new(&kafka.topics)),
            data_dir: dir.to_path_buf(),
            max_record_bytes: 1024,
            default_max_attempts: 3,
            status_retention: Duration::from_secs(7 * 24 * 3600),
            idempotency_ttl: Duration::from_secs(60),
        }
    }
}
