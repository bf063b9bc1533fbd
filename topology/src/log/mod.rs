//! The `Log` seam: partitioned, offset-addressed, keyed topics, read by a consumer group and
//! written in transactions. The topology runs on it unchanged over two implementations:
//!
//! - [`kafka`]: the production log (rdkafka) — consumer group with static membership, a
//!   transactional producer per member (Kafka Streams `exactly_once_v2` style), read_committed.
//! - [`embedded`]: an in-process log persisted under a data dir, for `howk dev` and the topology
//!   test driver. Same semantics, one process.
//!
//! The API is blocking on purpose: the stream thread that drives it is a plain OS thread, so a
//! rebalance callback (which must commit before it returns) runs where the task state lives and
//! never blocks the async reactor.

pub mod embedded;
pub mod kafka;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;

/// One partition of one topic.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    pub topic: Arc<str>,
    pub partition: i32,
}

impl TopicPartition {
    pub fn new(topic: &str, partition: i32) -> Self {
        Self {
            topic: Arc::from(topic),
            partition,
        }
    }
}

impl std::fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}[{}]", self.topic, self.partition)
    }
}

/// A record read from the log. Key and value stay `Bytes` from the consumer to the HTTP body.
#[derive(Debug, Clone)]
pub struct Record {
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Bytes>,
    /// `None` is a tombstone.
    pub value: Option<Bytes>,
    /// Milliseconds since the epoch (the producer's create time).
    pub timestamp_ms: i64,
}

/// A record to write. `partition: None` lets the log pick by key (the same key always lands on
/// the same partition); changelog writes name the partition of their task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutRecord {
    pub topic: Arc<str>,
    pub partition: Option<i32>,
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
}

/// What a group member's poll yields.
#[derive(Debug)]
pub enum Event {
    /// These partitions are now ours; their tasks restore before their first record.
    Assigned(Vec<TopicPartition>),
    /// These partitions are gone: the open transaction was committed in the revocation callback,
    /// so their tasks close cleanly and drop what is still in flight.
    Revoked(Vec<TopicPartition>),
    /// These partitions are gone and their uncommitted work with them (the assignment was lost,
    /// or the revocation commit failed and was aborted): their tasks are dropped without a clean
    /// checkpoint, so whoever takes them next rebuilds from the changelogs.
    Lost(Vec<TopicPartition>),
    Record(Record),
}

/// What a reader's poll yields.
#[derive(Debug)]
pub enum ReadEvent {
    Record(Record),
    /// The partition has no more committed records for now.
    EndOfPartition(TopicPartition),
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("{operation} failed")]
    Kafka {
        operation: &'static str,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error("this member was fenced by a newer one ({0}); its transaction is lost")]
    Fenced(String),
    #[error("unknown topic {0}")]
    UnknownTopic(String),
    /// A send or commit of this member failed earlier: it commits nothing more and must be
    /// replaced (the stream thread restarts, and tasks rebuild from the log).
    #[error("this member's transaction failed earlier; it commits nothing more")]
    Poisoned,
    #[error("embedded log file {path}: {reason}")]
    Storage { path: String, reason: String },
    #[error("embedded log: {0}")]
    Embedded(String),
    /// A record over [`MAX_MESSAGE_BYTES`]: refused before anything was sent, so the open
    /// transaction is intact and the caller may put something else in its place.
    #[error("a record of {bytes} bytes for {topic} is over the {limit}-byte limit")]
    TooLarge {
        topic: String,
        bytes: usize,
        limit: usize,
    },
}

/// The one record size budget, end to end: every producer's `message.max.bytes` and every
/// howk topic's `max.message.bytes` (plus batch overhead). Inputs are smaller
/// (`processing.max_record_bytes`, at most [`MAX_INPUT_RECORD_BYTES`]), so what a stage derives
/// from one — a delivery record, a retry, a dead letter with the raw payload (base64 for binary
/// payloads: 4/3) — fits.
pub const MAX_MESSAGE_BYTES: usize = 8 * 1024 * 1024;

/// The largest `processing.max_record_bytes` allowed: half the budget, leaving room for what
/// stages add to a record (headers, base64, the dead letter's fields).
pub const MAX_INPUT_RECORD_BYTES: usize = MAX_MESSAGE_BYTES / 2;

/// A record's size as the size budget counts it.
pub fn record_bytes(record: &OutRecord) -> usize {
    record.key.len() + record.value.as_ref().map_or(0, Vec::len)
}

/// Offsets to commit: the next offset to read per partition.
pub type Offsets = Vec<(TopicPartition, i64)>;

/// A partitioned log with consumer groups and transactions.
pub trait Log: Send + Sync + 'static {
    type Member: GroupMember;
    type Reader: TopicReader;

    /// Joins consumer group `group` on `topics` with a transactional producer, as member
    /// `instance_id` (stable across restarts, so a restarted member takes over its partitions
    /// and fences its predecessor's open transaction at once).
    fn join(
        &self,
        group: &str,
        instance_id: &str,
        topics: &[Arc<str>],
    ) -> Result<Self::Member, LogError>;

    /// A reader of chosen partitions from chosen offsets (restoration, the scripts table).
    fn reader(&self) -> Result<Self::Reader, LogError>;

    /// Writes records outside any group, atomically (one transaction when there are several).
    fn produce(&self, records: Vec<OutRecord>) -> Result<(), LogError>;

    /// How many partitions `topic` has.
    fn partitions(&self, topic: &str) -> Result<i32, LogError>;
}

/// One member of a consumer group with its open transaction.
pub trait GroupMember: Send {
    /// The next event, or `None` after `timeout` without one.
    fn poll(&mut self, timeout: Duration) -> Result<Option<Event>, LogError>;

    /// Adds a record to the open transaction.
    fn send(&mut self, record: OutRecord) -> Result<(), LogError>;

    /// Records the offsets the next commit includes (also used by a revocation callback, which
    /// commits whatever has been staged so far).
    fn stage_offsets(&mut self, offsets: &[(TopicPartition, i64)]);

    /// Commits the open transaction — sent records and staged offsets, atomically — and opens
    /// the next one.
    fn commit(&mut self) -> Result<(), LogError>;

    /// The group's committed offset of a partition we own (`None`: nothing committed yet).
    fn committed(&self, partition: &TopicPartition) -> Result<Option<i64>, LogError>;

    /// Stops (or resumes) fetching a partition, for backpressure.
    fn pause(&mut self, partition: &TopicPartition, paused: bool) -> Result<(), LogError>;

    /// The changelog partitions of the task reading `source`: when `source` is revoked, their
    /// end offsets are recorded right after the revocation's commit, while it is still owned.
    /// A log whose partitions never move to another member needs nothing (the default).
    fn track_changelogs(&mut self, _source: &TopicPartition, _changelogs: Vec<TopicPartition>) {}

    /// The changelog ends recorded when `source` was revoked (taken once); empty when none
    /// were recorded.
    fn revoked_changelog_ends(&mut self, _source: &TopicPartition) -> HashMap<TopicPartition, i64> {
        HashMap::new()
    }
}

/// Makes readers on demand: restoration and checkpoints need one briefly, and a Kafka reader is
/// a client with its own threads, not worth keeping per task.
pub type ReaderFactory = Arc<dyn Fn() -> Result<Box<dyn TopicReader>, LogError> + Send + Sync>;

/// Reads assigned partitions, committed records only.
pub trait TopicReader: Send {
    /// Reads `partitions` from their offsets (replacing any previous assignment).
    fn assign(&mut self, partitions: &[(TopicPartition, i64)]) -> Result<(), LogError>;

    /// The next record or end-of-partition signal, or `None` after `timeout`.
    fn poll(&mut self, timeout: Duration) -> Result<Option<ReadEvent>, LogError>;

    /// The offset after the last committed record of `partition` (its end for read_committed
    /// readers, when no transaction is open on it).
    fn end_offset(&mut self, partition: &TopicPartition) -> Result<i64, LogError>;

    /// The first offset of `partition` whose record time is at or after `time_ms`; its end
    /// offset when there is none (replays of a time range).
    fn offset_for_time(
        &mut self,
        partition: &TopicPartition,
        time_ms: i64,
    ) -> Result<i64, LogError>;
}

/// A [`ReaderFactory`] that lends readers from a pool instead of making one per call: a task's
/// restore then costs a fetch, not a new client and its connections (measured on Kafka: ~150 ms
/// per task with a fresh client). A lent reader goes back to the pool when dropped.
pub fn pooled_readers(
    make: impl Fn() -> Result<Box<dyn TopicReader>, LogError> + Send + Sync + 'static,
) -> ReaderFactory {
    let pool: Arc<Mutex<Vec<Box<dyn TopicReader>>>> = Arc::default();
    Arc::new(move || {
        let pooled = pool.lock().expect("reader pool lock").pop();
        let reader = match pooled {
            Some(reader) => reader,
            None => make()?,
        };
        Ok(Box::new(LentReader {
            reader: Some(reader),
            pool: Arc::clone(&pool),
        }))
    })
}

struct LentReader {
    reader: Option<Box<dyn TopicReader>>,
    pool: Arc<Mutex<Vec<Box<dyn TopicReader>>>>,
}

impl LentReader {
    fn inner(&mut self) -> &mut dyn TopicReader {
        self.reader.as_deref_mut().expect("present until dropped")
    }
}

impl TopicReader for LentReader {
    fn assign(&mut self, partitions: &[(TopicPartition, i64)]) -> Result<(), LogError> {
        self.inner().assign(partitions)
    }

    fn poll(&mut self, timeout: Duration) -> Result<Option<ReadEvent>, LogError> {
        self.inner().poll(timeout)
    }

    fn end_offset(&mut self, partition: &TopicPartition) -> Result<i64, LogError> {
        self.inner().end_offset(partition)
    }

    fn offset_for_time(
        &mut self,
        partition: &TopicPartition,
        time_ms: i64,
    ) -> Result<i64, LogError> {
        self.inner().offset_for_time(partition, time_ms)
    }
}

impl Drop for LentReader {
    fn drop(&mut self) {
        if let Some(reader) = self.reader.take() {
            self.pool.lock().expect("reader pool lock").push(reader);
        }
    }
}
