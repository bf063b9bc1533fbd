//! Replay jobs: re-driving dead letters, as a job over the log like everything else; and
//! [`dry_run`], a candidate script run beside the current one over recorded traffic.
//!
//! A re-drive reads `howk.deadletter` up to the end offsets it saw when it started — so dead
//! letters that its own re-drives cause are never picked up again — and keeps the letters its
//! filter matches. For each, it reads the original `howk.pending` record the letter points to
//! (`origin`: exact bytes, payload, headers and signing secret included) and enqueues it again:
//! the same webhook id, attempts from the first, and the next replay generation, which the
//! idempotency store does not take for a repeat of the earlier ones. An original gone from
//! retention is reported and skipped, unless the job may fall back to the dead letter's own
//! copy — redacted, so without its secret headers and signing secret: sent unsigned, and
//! counted as such.
//!
//! Exactly once: each batch of re-driven records is produced in one transaction together with
//! the job's progress on `howk.replays` (compacted, keyed by job id): the dead-letter positions
//! scanned and the counters. A job killed mid-way resumes from its last committed progress and
//! enqueues nothing twice. Jobs are paced (`max_rate` records/s) so live traffic keeps its share.

pub mod dry_run;
pub mod jobs;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use howk_processor::record::{PendingContext, Webhook};

use crate::config::KafkaConfig;
use crate::log::{Log, LogError, OutRecord, ReadEvent, TopicPartition, TopicReader};
use crate::scripts_table::ScriptsTable;

/// Letters re-driven per transaction.
pub const BATCH: usize = 500;

/// How long one poll of a reader waits.
const POLL: Duration = Duration::from_millis(200);

/// Most skipped items a job's progress names (the counters count them all).
const SAMPLE: usize = 100;

/// Which dead letters a re-drive takes. Empty lists match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RedriveFilter {
    /// Exact config_ids.
    pub config_ids: Vec<String>,
    /// Namespaces (the part of a config_id before its first `:`).
    pub namespaces: Vec<String>,
    /// `reason_type`s (`exhausted`, `non_retryable_status`, ...); empty: all but
    /// `invalid_record`, which would only be refused again unless asked for by name.
    pub reasons: Vec<String>,
    /// Dead-lettered at or after this (RFC 3339).
    pub since: Option<String>,
    /// Dead-lettered before this (RFC 3339).
    pub until: Option<String>,
    pub webhook_ids: Vec<String>,
}

/// What a job reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// `howk.deadletter`, filtered by [`RedriveFilter`]: re-drive.
    #[default]
    Deadletter,
    /// `howk.pending`, selected by [`PendingFilter`]: reprocess.
    Pending,
}

/// Which `howk.pending` records a reprocess takes. Empty lists match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PendingFilter {
    pub config_ids: Vec<String>,
    pub namespaces: Vec<String>,
    /// Only these partitions (all when empty).
    pub partitions: Vec<i32>,
    /// From this offset of each partition read.
    pub from_offset: Option<i64>,
    /// Up to this offset, excluded.
    pub to_offset: Option<i64>,
    /// Records written at or after this time (RFC 3339), found with offsets-for-times.
    pub since: Option<String>,
    /// Records written before this time (RFC 3339).
    pub until: Option<String>,
}

/// How a job ended, or that it has not.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    #[default]
    Running,
    Done,
    Cancelled,
    Failed,
}

/// One item a job did not enqueue, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    pub webhook_id: String,
    pub reason: String,
}

/// A job's progress: what `howk.replays` holds for it, what its API and CLI show.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct JobProgress {
    pub job_id: String,
    pub kind: String,
    pub state: JobState,
    pub source: Source,
    /// The dead letters a re-drive takes.
    pub filter: RedriveFilter,
    /// The pending records a reprocess takes.
    pub pending_filter: PendingFilter,
    /// The script each webhook runs: `current` (or empty: the latest, as any webhook),
    /// `as-of` (the version its config had at its `created_at`), or a version's hash.
    pub script: String,
    pub from_dead_letter_copy: bool,
    /// The instance running it (jobs started through the API resume there after a restart);
    /// empty for the CLI's.
    pub owner: String,
    /// Webhooks per second at most (0: unpaced).
    pub max_rate: f64,
    /// Letters re-driven per transaction (0: [`BATCH`]).
    pub batch: usize,
    /// Next dead-letter offset to read, per partition.
    pub positions: BTreeMap<i32, i64>,
    /// Where the job stops, per partition: the ends when it started.
    pub ends: BTreeMap<i32, i64>,
    pub scanned: u64,
    pub matched: u64,
    pub enqueued: u64,
    /// Enqueued from the dead letter's copy, without their secrets: unsigned.
    pub unsigned: u64,
    pub skipped: u64,
    pub skipped_sample: Vec<Skipped>,
    pub error: Option<String>,
    pub started_at: String,
    pub updated_at: String,
}

impl JobProgress {
    /// Letters left to scan.
    pub fn remaining(&self) -> u64 {
        self.ends
            .iter()
            .map(|(p, end)| (end - self.positions.get(p).copied().unwrap_or(0)).max(0) as u64)
            .sum()
    }

    /// Letters the job scans in all.
    pub fn total(&self) -> u64 {
        self.scanned + self.remaining()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("job {0} is {1:?}: nothing to resume")]
    Finished(String, JobState),
    #[error("{0}")]
    Invalid(String),
    #[error("the scripts table: {0}")]
    Scripts(#[from] howk_state::store::StoreError),
}

/// What a re-drive needs of the topology's configuration.
#[derive(Debug, Clone)]
pub struct RedriveSettings {
    pub pending: Arc<str>,
    pub deadletter: Arc<str>,
    pub replays: Arc<str>,
    /// Records per second at most; 0: unpaced.
    pub max_rate: f64,
    pub batch: usize,
}

impl RedriveSettings {
    pub fn new(kafka: &KafkaConfig, max_rate: f64) -> Self {
        Self {
            pending: Arc::from(kafka.topics.pending.as_str()),
            deadletter: Arc::from(kafka.topics.deadletter.as_str()),
            replays: Arc::from(kafka.topics.replays.as_str()),
            max_rate,
            batch: BATCH,
        }
    }
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

pub(crate) fn millis(text: &Option<String>) -> Result<Option<i64>, ReplayError> {
    text.as_deref()
        .map(|t| {
            chrono::DateTime::parse_from_rfc3339(t)
                .map(|t| t.timestamp_millis())
                .map_err(|e| ReplayError::Invalid(format!("{t:?} is not RFC 3339: {e}")))
        })
        .transpose()
}

/// The latest progress of `job_id` on the replays topic, if it has any.
pub fn find_progress<L: Log>(
    log: &L,
    replays: &str,
    job_id: &str,
) -> Result<Option<JobProgress>, ReplayError> {
    let mut found = None;
    read_all(log, replays, |record| {
        if record.key.as_deref() == Some(job_id.as_bytes()) {
            found = record
                .value
                .as_deref()
                .and_then(|v| serde_json::from_slice::<JobProgress>(v).ok());
        }
        true
    })?;
    Ok(found)
}

/// The latest document of `job_id` on the replays topic, as JSON (re-drive progress or a dry
/// run's report).
pub fn find_value<L: Log>(
    log: &L,
    replays: &str,
    job_id: &str,
) -> Result<Option<serde_json::Value>, ReplayError> {
    let mut found = None;
    read_all(log, replays, |record| {
        if record.key.as_deref() == Some(job_id.as_bytes()) {
            found = record
                .value
                .as_deref()
                .and_then(|v| serde_json::from_slice(v).ok());
        }
        true
    })?;
    Ok(found)
}

/// Every job's latest progress on the replays topic.
pub fn list_progress<L: Log>(log: &L, replays: &str) -> Result<Vec<JobProgress>, ReplayError> {
    let mut jobs: BTreeMap<String, JobProgress> = BTreeMap::new();
    read_all(log, replays, |record| {
        if let Some(progress) = record
            .value
            .as_deref()
            .and_then(|v| serde_json::from_slice::<JobProgress>(v).ok())
        {
            jobs.insert(progress.job_id.clone(), progress);
        }
        true
    })?;
    Ok(jobs.into_values().collect())
}

/// Calls `each` on every committed record of `topic` up to its current end (all partitions),
/// until it returns false.
fn read_all<L: Log>(
    log: &L,
    topic: &str,
    mut each: impl FnMut(&crate::log::Record) -> bool,
) -> Result<(), ReplayError> {
    let partitions = log.partitions(topic)?;
    let mut reader = log.reader()?;
    for partition in 0..partitions {
        let tp = TopicPartition::new(topic, partition);
        let end = reader.end_offset(&tp)?;
        if end == 0 {
            continue;
        }
        reader.assign(&[(tp.clone(), 0)])?;
        let mut idle_since = Instant::now();
        loop {
            match reader.poll(POLL)? {
                Some(ReadEvent::Record(record)) => {
                    idle_since = Instant::now();
                    let last = record.offset + 1 >= end;
                    if !each(&record) {
                        return Ok(());
                    }
                    if last {
                        break;
                    }
                }
                Some(ReadEvent::EndOfPartition(_)) => break,
                None if idle_since.elapsed() > Duration::from_secs(30) => {
                    return Err(ReplayError::Invalid(format!(
                        "{tp} stopped short of its end {end}"
                    )));
                }
                None => {}
            }
        }
    }
    Ok(())
}

/// A dead letter as a re-drive reads it.
#[derive(Deserialize)]
struct Letter<'a> {
    #[serde(borrow)]
    webhook: &'a RawValue,
    reason_type: String,
    time: Option<String>,
    origin: Option<howk_processor::record::webhook::Origin>,
}

/// The fields of the letter's webhook a filter looks at.
#[derive(Deserialize)]
struct LetterWebhook {
    id: Option<String>,
    config_id: Option<String>,
}

struct Filter {
    spec: RedriveFilter,
    since_ms: Option<i64>,
    until_ms: Option<i64>,
}

impl Filter {
    fn new(spec: RedriveFilter) -> Result<Self, ReplayError> {
        Ok(Self {
            since_ms: millis(&spec.since)?,
            until_ms: millis(&spec.until)?,
            spec,
        })
    }

    fn matches(&self, letter: &Letter<'_>, webhook: &LetterWebhook) -> bool {
        let spec = &self.spec;
        let config_id = webhook.config_id.as_deref().unwrap_or_default();
        let id = webhook.id.as_deref().unwrap_or_default();
        // Parsed only when the filter has a time range.
        let time_ms = || {
            letter
                .time
                .as_deref()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.timestamp_millis())
        };
        config_matches(&spec.config_ids, &spec.namespaces, config_id)
            // An invalid record would only be refused again: taken when asked for by name.
            && (if spec.reasons.is_empty() {
                letter.reason_type != "invalid_record"
            } else {
                spec.reasons.contains(&letter.reason_type)
            })
            && (spec.webhook_ids.is_empty() || spec.webhook_ids.iter().any(|w| w == id))
            && self.since_ms.is_none_or(|s| time_ms().is_some_and(|t| t >= s))
            && self.until_ms.is_none_or(|u| time_ms().is_some_and(|t| t < u))
    }
}

/// One matched letter on its way to being enqueued again.
struct Item {
    webhook_id: String,
    config_id: String,
    origin: Option<howk_processor::record::webhook::Origin>,
    /// The letter's redacted webhook, for `from_dead_letter_copy`.
    copy: Option<Box<RawValue>>,
    /// The original, when the job read it already (a reprocess).
    original: Option<Original>,
}

/// Runs a re-drive or reprocess job to its end: a new one (its progress has no ends yet) from
/// the start of its range, a resumed one from its committed positions. Calls `report` after
/// each committed batch; `cancel` stops it between batches.
///
/// `scripts` is needed by an `as-of` script choice (the versions a webhook's config had).
pub fn redrive<L: Log>(
    log: &L,
    settings: &RedriveSettings,
    start: JobProgress,
    scripts: Option<&ScriptsTable>,
    cancel: &AtomicBool,
    mut report: impl FnMut(&JobProgress),
) -> Result<JobProgress, ReplayError> {
    let mut progress = start;
    if progress.state != JobState::Running {
        return Err(ReplayError::Finished(progress.job_id, progress.state));
    }
    let filter = Filter::new(progress.filter.clone())?;
    let choice = ScriptPin::parse(&progress.script, scripts)?;
    let source_topic = match progress.source {
        Source::Deadletter => Arc::clone(&settings.deadletter),
        Source::Pending => Arc::clone(&settings.pending),
    };
    if progress.ends.is_empty() {
        // A new job: it covers what the topic holds now (a reprocess: the range it selects).
        let mut reader = log.reader()?;
        let selected = &progress.pending_filter;
        let (since, until) = (millis(&selected.since)?, millis(&selected.until)?);
        for partition in 0..log.partitions(&source_topic)? {
            let tp = TopicPartition::new(&source_topic, partition);
            let mut end = reader.end_offset(&tp)?;
            let mut from = 0;
            if progress.source == Source::Pending {
                if !selected.partitions.is_empty() && !selected.partitions.contains(&partition) {
                    continue;
                }
                from = selected.from_offset.unwrap_or(0);
                if let Some(since) = since {
                    from = from.max(reader.offset_for_time(&tp, since)?);
                }
                if let Some(until) = until {
                    end = end.min(reader.offset_for_time(&tp, until)?);
                }
                if let Some(to) = selected.to_offset {
                    end = end.min(to);
                }
            }
            progress.ends.insert(partition, end.max(from));
            progress.positions.insert(partition, from);
        }
        progress.kind = match progress.source {
            Source::Deadletter => "redrive",
            Source::Pending => "reprocess",
        }
        .into();
        progress.started_at = now_rfc3339();
    }
    let started = Instant::now();
    let enqueued_at_start = progress.enqueued;
    let mut letters = log.reader()?;
    let assignment: Vec<(TopicPartition, i64)> = progress
        .ends
        .iter()
        .filter(|(p, end)| progress.positions.get(p).copied().unwrap_or(0) < **end)
        .map(|(p, _)| {
            (
                TopicPartition::new(&source_topic, *p),
                progress.positions.get(p).copied().unwrap_or(0),
            )
        })
        .collect();
    if !assignment.is_empty() {
        letters.assign(&assignment)?;
    }
    let mut originals = log.reader()?;
    loop {
        if cancel.load(Ordering::Relaxed) {
            progress.state = JobState::Cancelled;
            commit_batch(log, settings, &mut progress, Vec::new())?;
            report(&progress);
            return Ok(progress);
        }
        let batch = match progress.source {
            Source::Deadletter => scan_batch(&mut letters, &filter, &mut progress, settings.batch)?,
            Source::Pending => scan_pending(&mut letters, &mut progress, settings.batch)?,
        };
        let done = progress.remaining() == 0;
        let records = enqueue_records(
            &mut originals,
            settings,
            &mut progress,
            batch,
            &choice,
            scripts,
        )?;
        if done {
            progress.state = JobState::Done;
        }
        commit_batch(log, settings, &mut progress, records)?;
        report(&progress);
        if done {
            return Ok(progress);
        }
        if settings.max_rate > 0.0 {
            // Paced: the next batch waits until the job is back under its rate.
            let sent = (progress.enqueued - enqueued_at_start) as f64;
            let due = Duration::from_secs_f64(sent / settings.max_rate);
            std::thread::sleep(due.saturating_sub(started.elapsed()));
        }
    }
}

/// The job's next record within its range, its position moved past it; `None` once every
/// partition has reached its end.
fn next_in_range(
    reader: &mut dyn TopicReader,
    progress: &mut JobProgress,
) -> Result<Option<crate::log::Record>, ReplayError> {
    let mut idle_since = Instant::now();
    while progress.remaining() > 0 {
        let record = match reader.poll(POLL)? {
            Some(ReadEvent::Record(record)) => record,
            Some(ReadEvent::EndOfPartition(tp)) => {
                // Everything before the job's end is committed, so the end of what a
                // read_committed reader sees is past it: the offsets left are transaction
                // markers and aborted records.
                if let Some(end) = progress.ends.get(&tp.partition).copied() {
                    progress.positions.insert(tp.partition, end);
                }
                idle_since = Instant::now();
                continue;
            }
            None if idle_since.elapsed() > Duration::from_secs(30) => {
                return Err(ReplayError::Invalid(format!(
                    "the source topic stopped short of the job's end ({} records left)",
                    progress.remaining()
                )));
            }
            None => continue,
        };
        idle_since = Instant::now();
        let end = progress.ends.get(&record.partition).copied().unwrap_or(0);
        if record.offset >= end {
            // Past the job's end on this partition (written after it started).
            progress.positions.insert(record.partition, end);
            continue;
        }
        progress
            .positions
            .insert(record.partition, record.offset + 1);
        progress.scanned += 1;
        return Ok(Some(record));
    }
    Ok(None)
}

/// Whether `config_id` is among `config_ids` and in one of `namespaces` (empty lists match
/// everything).
pub(crate) fn config_matches(
    config_ids: &[String],
    namespaces: &[String],
    config_id: &str,
) -> bool {
    (config_ids.is_empty() || config_ids.iter().any(|c| c == config_id))
        && (namespaces.is_empty()
            || namespaces
                .iter()
                .any(|n| n == howk_processor::ids::namespace(config_id)))
}

/// Reads letters until `batch` match or the job's ends are reached.
fn scan_batch(
    reader: &mut dyn TopicReader,
    filter: &Filter,
    progress: &mut JobProgress,
    batch: usize,
) -> Result<Vec<Item>, ReplayError> {
    let mut items = Vec::new();
    while items.len() < batch {
        let Some(record) = next_in_range(reader, progress)? else {
            break;
        };
        let Some(value) = record.value.as_deref() else {
            continue;
        };
        let Ok(letter) = serde_json::from_slice::<Letter<'_>>(value) else {
            continue;
        };
        let Ok(webhook) = serde_json::from_str::<LetterWebhook>(letter.webhook.get()) else {
            continue;
        };
        if !filter.matches(&letter, &webhook) {
            continue;
        }
        progress.matched += 1;
        items.push(Item {
            webhook_id: webhook
                .id
                .or_else(|| {
                    record
                        .key
                        .as_deref()
                        .map(|k| String::from_utf8_lossy(k).into())
                })
                .unwrap_or_default(),
            config_id: webhook.config_id.unwrap_or_default(),
            origin: letter.origin,
            copy: Some(letter.webhook.to_owned()),
            original: None,
        });
    }
    Ok(items)
}

/// The pending records of `items`: each original read again (or the letter's copy), with its id
/// kept, its attempts from the first and the next replay generation.
fn enqueue_records(
    reader: &mut dyn TopicReader,
    settings: &RedriveSettings,
    progress: &mut JobProgress,
    items: Vec<Item>,
    choice: &ScriptPin,
    scripts: Option<&ScriptsTable>,
) -> Result<Vec<OutRecord>, ReplayError> {
    let wanted: Vec<(i32, i64)> = items
        .iter()
        .filter(|item| item.original.is_none())
        .filter_map(|item| item.origin.as_ref())
        .filter(|origin| origin.topic == *settings.pending)
        .map(|origin| (origin.partition, origin.offset))
        .collect();
    let found = read_originals(reader, &settings.pending, wanted)?;
    let mut records = Vec::with_capacity(items.len());
    for item in items {
        let original = item.original.as_ref().or_else(|| {
            item.origin
                .as_ref()
                .filter(|origin| origin.topic == *settings.pending)
                .and_then(|origin| found.get(&(origin.partition, origin.offset)))
        });
        let built = match original {
            Some((key, value, timestamp_ms)) => choice
                .pin_for(value, key, *timestamp_ms, scripts)
                .and_then(|pin| redriven_value(value, &item.webhook_id, pin.as_deref()))
                .map(|value| (key.clone(), value, false)),
            None if progress.from_dead_letter_copy && item.copy.is_some() => item
                .copy
                .as_deref()
                .map(copy_value)
                .expect("checked above")
                .map(|value| (item.config_id.clone().into_bytes(), value, true)),
            None => Err(match &item.origin {
                None => "the dead letter names no original record (written before re-drives \
                         existed)"
                    .to_owned(),
                Some(origin) => format!(
                    "the original record {}[{}]@{} is gone from retention",
                    origin.topic, origin.partition, origin.offset
                ),
            }),
        };
        match built {
            Ok((key, value, unsigned)) => {
                progress.enqueued += 1;
                progress.unsigned += u64::from(unsigned);
                records.push(OutRecord {
                    topic: Arc::clone(&settings.pending),
                    partition: None,
                    key,
                    value: Some(value),
                });
            }
            Err(reason) => {
                progress.skipped += 1;
                if progress.skipped_sample.len() < SAMPLE {
                    progress.skipped_sample.push(Skipped {
                        webhook_id: item.webhook_id,
                        reason,
                    });
                }
            }
        }
    }
    Ok(records)
}

/// An original pending record: key, value, and its time (a webhook's default `created_at`).
type Original = (Vec<u8>, Vec<u8>, i64);

/// Original records, by (partition, offset).
type Originals = HashMap<(i32, i64), Original>;

/// Reads the records at `wanted` (partition, offset) of `topic`: key and value of each still
/// there. One forward pass per partition, seeking over long gaps.
fn read_originals(
    reader: &mut dyn TopicReader,
    topic: &str,
    mut wanted: Vec<(i32, i64)>,
) -> Result<Originals, ReplayError> {
    wanted.sort_unstable();
    wanted.dedup();
    let mut found = HashMap::new();
    let mut by_partition: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    for (partition, offset) in wanted {
        by_partition.entry(partition).or_default().push(offset);
    }
    for (partition, offsets) in by_partition {
        let tp = TopicPartition::new(topic, partition);
        let end = reader.end_offset(&tp)?;
        let mut position: Option<i64> = None;
        for offset in offsets {
            if offset >= end {
                continue;
            }
            if position.is_none_or(|p| p > offset || offset - p > 1000) {
                reader.assign(&[(tp.clone(), offset)])?;
                position = Some(offset);
            }
            let mut idle_since = Instant::now();
            loop {
                match reader.poll(POLL)? {
                    Some(ReadEvent::Record(record)) if record.partition == partition => {
                        idle_since = Instant::now();
                        position = Some(record.offset + 1);
                        if record.offset == offset {
                            found.insert(
                                (partition, offset),
                                (
                                    record.key.as_deref().unwrap_or_default().to_vec(),
                                    record.value.as_deref().unwrap_or_default().to_vec(),
                                    record.timestamp_ms,
                                ),
                            );
                        }
                        if record.offset >= offset {
                            // Found, or gone (deleted by retention: the log starts later).
                            break;
                        }
                    }
                    Some(ReadEvent::EndOfPartition(_)) => break,
                    Some(ReadEvent::Record(_)) => {}
                    None if idle_since.elapsed() > Duration::from_secs(30) => {
                        return Err(ReplayError::Invalid(format!(
                            "{tp} did not deliver offset {offset} within 30 s"
                        )));
                    }
                    None => {}
                }
            }
        }
    }
    Ok(found)
}

/// The original pending value with its id fixed (a record without one had it derived from its
/// offset, which the new record does not share), attempts from the first, and the next replay
/// generation. Every other field — payload bytes, headers, signing secrets — as it was.
fn redriven_value(original: &[u8], webhook_id: &str, pin: Option<&str>) -> Result<Vec<u8>, String> {
    let mut fields: BTreeMap<String, Box<RawValue>> = serde_json::from_slice(original)
        .map_err(|e| format!("the original record is not a JSON object: {e}"))?;
    let generation = fields
        .get("replay_generation")
        .and_then(|g| serde_json::from_str::<u32>(g.get()).ok())
        .unwrap_or(0)
        + 1;
    let raw = |value: serde_json::Value| {
        serde_json::value::to_raw_value(&value).expect("a JSON value serializes")
    };
    fields.insert("id".into(), raw(webhook_id.into()));
    fields.insert("replay_generation".into(), raw(generation.into()));
    fields.remove("attempt");
    match pin {
        Some(pin) => fields.insert("script_pin".into(), raw(pin.into())),
        // The latest script: an earlier replay's pin does not carry over.
        None => fields.remove("script_pin"),
    };
    Ok(serde_json::to_vec(&fields).expect("raw fields serialize"))
}

/// A pending value from a dead letter's redacted copy: redacted headers dropped (their values
/// are gone), no signing secret, attempts from the first.
fn copy_value(copy: &RawValue) -> Result<Vec<u8>, String> {
    let mut fields: BTreeMap<String, Box<RawValue>> = serde_json::from_str(copy.get())
        .map_err(|e| format!("the dead letter's copy is not a JSON object: {e}"))?;
    if !fields.contains_key("endpoint") {
        return Err("the dead letter's copy has no endpoint (an invalid record)".into());
    }
    if let Some(headers) = fields.get("headers")
        && let Ok(map) = serde_json::from_str::<BTreeMap<String, String>>(headers.get())
    {
        let kept: BTreeMap<String, String> = map
            .into_iter()
            .filter(|(_, value)| value != "[REDACTED]")
            .collect();
        fields.insert(
            "headers".into(),
            serde_json::value::to_raw_value(&kept).expect("headers serialize"),
        );
    }
    fields.remove("attempt");
    fields.insert(
        "replay_generation".into(),
        serde_json::value::to_raw_value(&1).expect("a number serializes"),
    );
    Ok(serde_json::to_vec(&fields).expect("raw fields serialize"))
}

/// Checks a job's script choice (`current`, `as-of` or a version's hash) before it starts.
pub fn check_script_choice(text: &str) -> Result<(), ReplayError> {
    match text {
        "as-of" | "as_of" => Ok(()),
        other => ScriptPin::parse(other, None).map(drop),
    }
}

/// A job's script choice, resolved per webhook.
enum ScriptPin {
    /// The latest script, as any webhook.
    Current,
    /// The version its config had at its `created_at`.
    AsOf,
    /// This version (hash).
    Version(String),
}

impl ScriptPin {
    fn parse(text: &str, scripts: Option<&ScriptsTable>) -> Result<Self, ReplayError> {
        Ok(match text {
            "" | "current" => Self::Current,
            "as-of" | "as_of" => {
                if scripts.is_none() {
                    return Err(ReplayError::Invalid(
                        "an as-of script choice needs the scripts table".into(),
                    ));
                }
                Self::AsOf
            }
            hash if hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()) => {
                Self::Version(hash.to_ascii_lowercase())
            }
            other => {
                return Err(ReplayError::Invalid(format!(
                    "script must be current, as-of or a version's SHA-256 hash, got {other:?}"
                )));
            }
        })
    }

    /// The `script_pin` of one re-enqueued webhook (`None`: no pin).
    fn pin_for(
        &self,
        value: &[u8],
        key: &[u8],
        timestamp_ms: i64,
        scripts: Option<&ScriptsTable>,
    ) -> Result<Option<String>, String> {
        match self {
            Self::Current => Ok(None),
            Self::Version(hash) => Ok(Some(hash.clone())),
            Self::AsOf => {
                let webhook = Webhook::decode_pending(
                    value,
                    &PendingContext {
                        key: Some(key),
                        timestamp_ms,
                        topic: "",
                        partition: 0,
                        offset: 0,
                        max_record_bytes: usize::MAX,
                        default_max_attempts: 1,
                    },
                )
                .map_err(|invalid| format!("the original is not a valid webhook: {invalid}"))?;
                let table = scripts.expect("checked when the job started");
                let config = table
                    .lookup_as_of(webhook.config_id.as_str(), webhook.created_at_ms)
                    .map_err(|error| format!("the scripts table: {error}"))?;
                // No script then: none now either.
                Ok(Some(config.map_or_else(|| "none".to_owned(), |c| c.hash)))
            }
        }
    }
}

/// Reads pending records until `batch` are selected or the job's ends are reached. The
/// records themselves are the originals.
fn scan_pending(
    reader: &mut dyn TopicReader,
    progress: &mut JobProgress,
    batch: usize,
) -> Result<Vec<Item>, ReplayError> {
    let selected = progress.pending_filter.clone();
    let mut items = Vec::new();
    while items.len() < batch {
        let Some(record) = next_in_range(reader, progress)? else {
            break;
        };
        let Some(value) = record.value.as_deref() else {
            continue;
        };
        let context = PendingContext {
            key: record.key.as_deref(),
            timestamp_ms: record.timestamp_ms,
            topic: &record.topic,
            partition: record.partition,
            offset: record.offset,
            max_record_bytes: usize::MAX,
            default_max_attempts: 1,
        };
        // An invalid record would only be refused again.
        let Ok(webhook) = Webhook::decode_pending(value, &context) else {
            continue;
        };
        let config_id = webhook.config_id.as_str();
        if !config_matches(&selected.config_ids, &selected.namespaces, config_id) {
            continue;
        }
        progress.matched += 1;
        items.push(Item {
            webhook_id: webhook.id.as_str().to_owned(),
            config_id: config_id.to_owned(),
            origin: webhook.origin.clone(),
            copy: None,
            original: Some((
                record.key.as_deref().unwrap_or_default().to_vec(),
                value.to_vec(),
                record.timestamp_ms,
            )),
        });
    }
    Ok(items)
}

/// Writes `records` and the job's progress in one transaction.
fn commit_batch<L: Log>(
    log: &L,
    settings: &RedriveSettings,
    progress: &mut JobProgress,
    mut records: Vec<OutRecord>,
) -> Result<(), ReplayError> {
    progress.updated_at = now_rfc3339();
    records.push(OutRecord {
        topic: Arc::clone(&settings.replays),
        partition: None,
        key: progress.job_id.clone().into_bytes(),
        value: Some(serde_json::to_vec(&progress).expect("progress serializes")),
    });
    log.produce(records)?;
    Ok(())
}

/// A new reprocess job's starting progress: the pending records `filter` selects, enqueued
/// again with the next replay generation.
pub fn new_reprocess(filter: PendingFilter, script: String) -> JobProgress {
    JobProgress {
        job_id: format!("rj_{}", ulid::Ulid::new()),
        kind: "reprocess".into(),
        source: Source::Pending,
        pending_filter: filter,
        script,
        ..JobProgress::default()
    }
}

/// A new re-drive job's starting progress.
pub fn new_job(filter: RedriveFilter, from_dead_letter_copy: bool) -> JobProgress {
    JobProgress {
        job_id: format!("rj_{}", ulid::Ulid::new()),
        kind: "redrive".into(),
        filter,
        from_dead_letter_copy,
        ..JobProgress::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_redriven_value_keeps_everything_but_id_attempt_and_generation() {
        let original = br#"{"endpoint":"https://e.example/h","payload":{"b":1.50,"a":12345678901234567890},"signing_secret":"whsec_x","attempt":3}"#;
        let value = redriven_value(original, "wh_1", None).unwrap();
        let text = String::from_utf8(value.clone()).unwrap();
        assert!(
            text.contains(r#""payload":{"b":1.50,"a":12345678901234567890}"#),
            "{text}"
        );
        let json: serde_json::Value = serde_json::from_slice(&value).unwrap();
        assert_eq!(json["id"], "wh_1");
        assert_eq!(json["replay_generation"], 1);
        assert_eq!(json["signing_secret"], "whsec_x");
        assert!(json.get("attempt").is_none());
        let again = redriven_value(&value, "wh_1", Some("abc")).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&again).unwrap();
        assert_eq!(json["replay_generation"], 2);
        assert_eq!(json["script_pin"], "abc");
        let current = redriven_value(&again, "wh_1", None).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&current).unwrap();
        assert!(json.get("script_pin").is_none());
    }

    #[test]
    fn a_copy_drops_redacted_headers_and_has_no_secret() {
        let copy = RawValue::from_string(
            r#"{"payload":{"a":1},"id":"wh_1","config_id":"c","endpoint":"https://e.example/h","headers":{"Authorization":"[REDACTED]","X-Plain":"1"},"attempt":4}"#.into(),
        )
        .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&copy_value(&copy).unwrap()).unwrap();
        assert_eq!(json["headers"], serde_json::json!({"X-Plain": "1"}));
        assert!(json.get("attempt").is_none());
        assert!(json.get("signing_secret").is_none());
        let invalid = RawValue::from_string(r#"{"raw_json":{}}"#.into()).unwrap();
        assert!(copy_value(&invalid).is_err());
    }

    #[test]
    fn filters_match_config_namespace_reason_time_and_ids() {
        let letter = |reason: &str, time: &str| {
            format!(
                r#"{{"webhook":{{"id":"wh_1","config_id":"shop:eu"}},"reason_type":"{reason}","time":"{time}"}}"#
            )
        };
        let check = |spec: RedriveFilter, text: &str| {
            let filter = Filter::new(spec).unwrap();
            let letter: Letter<'_> = serde_json::from_str(text).unwrap();
            let webhook: LetterWebhook = serde_json::from_str(letter.webhook.get()).unwrap();
            filter.matches(&letter, &webhook)
        };
        let text = letter("exhausted", "2026-12-01T10:00:00Z");
        assert!(check(RedriveFilter::default(), &text));
        let only = |f: fn(&mut RedriveFilter)| {
            let mut spec = RedriveFilter::default();
            f(&mut spec);
            spec
        };
        assert!(check(only(|f| f.namespaces = vec!["shop".into()]), &text));
        assert!(!check(only(|f| f.namespaces = vec!["music".into()]), &text));
        assert!(check(
            only(|f| f.config_ids = vec!["shop:eu".into()]),
            &text
        ));
        assert!(!check(only(|f| f.config_ids = vec!["shop".into()]), &text));
        assert!(check(only(|f| f.reasons = vec!["exhausted".into()]), &text));
        assert!(!check(
            only(|f| f.reasons = vec!["invalid_record".into()]),
            &text
        ));
        assert!(check(
            only(|f| f.since = Some("2026-12-01T00:00:00Z".into())),
            &text
        ));
        assert!(!check(
            only(|f| f.until = Some("2026-12-01T10:00:00Z".into())),
            &text
        ));
        assert!(check(only(|f| f.webhook_ids = vec!["wh_1".into()]), &text));
        assert!(!check(only(|f| f.webhook_ids = vec!["wh_2".into()]), &text));
        assert!(Filter::new(only(|f| f.since = Some("yesterday".into()))).is_err());
    }
}
