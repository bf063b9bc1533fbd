//! Kafka through rdkafka: the client settings every howk client shares, a bounded reachability
//! check, and the Kafka [`Log`]: a group member (consumer with static membership + its
//! transactional producer, committed together) and a group-less reader.
//!
//! librdkafka retries a down broker forever by design; howk's commands and readiness checks
//! instead ask for metadata with a deadline and name the broker address when it does not answer.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::client::Client;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::{
    Event, GroupMember, Log, LogError, MAX_MESSAGE_BYTES, OutRecord, ReadEvent, Record,
    TopicPartition, TopicReader,
};
use crate::config::KafkaConfig;

/// Why the broker could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KafkaClientError {
    #[error("cannot create a Kafka client for {brokers}")]
    Create {
        brokers: String,
        #[source]
        source: KafkaError,
    },
    #[error("Kafka broker {brokers} did not answer a metadata request within {timeout:?}")]
    Unreachable {
        brokers: String,
        timeout: Duration,
        #[source]
        source: KafkaError,
    },
}

/// Settings common to every client: bootstrap servers and how long requests may take.
pub fn client_config(config: &KafkaConfig) -> ClientConfig {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &config.brokers)
        .set("client.id", "howk")
        // librdkafka logs connection failures itself at error level; howk reports them once,
        // with the address, through KafkaClientError.
        .set("log_level", "3")
        .set(
            "socket.connection.setup.timeout.ms",
            config.request_timeout.as_millis().to_string(),
        );
    client
}

/// Asks the cluster for its metadata, bounded by `config.request_timeout`.
///
/// Blocks the calling thread: call it from `spawn_blocking` in async code.
pub fn check_reachable<C: rdkafka::ClientContext>(
    client: &Client<C>,
    config: &KafkaConfig,
) -> Result<(), KafkaClientError> {
    client
        .fetch_metadata(None, config.request_timeout)
        .map(|_| ())
        .map_err(|source| KafkaClientError::Unreachable {
            brokers: config.brokers.clone(),
            timeout: config.request_timeout,
            source,
        })
}

// ---------------------------------------------------------------------------------------------
// The Kafka `Log`.
// ---------------------------------------------------------------------------------------------

/// How long a transaction may stay open before the broker aborts it. Short, because an
/// abandoned transaction (a killed member with a new instance id) holds back every
/// read_committed consumer of its partitions until then.
const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a dead member keeps its partitions. Static membership lets a restarted member with
/// the same instance id take them back at once; this bounds the wait when it never returns.
const SESSION_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest the stream thread may go between polls: a full restore (restore.rs allows
/// 600 s) plus margin.
const MAX_POLL_INTERVAL: Duration = Duration::from_secs(900);
const _: () = assert!(
    MAX_POLL_INTERVAL.as_secs() > crate::restore::RESTORE_TIMEOUT.as_secs(),
    "a restore on the polling thread must end before the member is kicked out"
);

fn kafka(operation: &'static str) -> impl FnOnce(KafkaError) -> LogError {
    move |source| LogError::Kafka { operation, source }
}

/// The production log over a Kafka cluster.
pub struct KafkaLog {
    config: KafkaConfig,
    /// The producers behind [`Log::produce`], each made on first use. One producer has one
    /// transaction at a time, so concurrent callers (API batches) take turns over a few of them
    /// (measured with one: batches of 100 serialized at ~120 requests/s).
    producers: Vec<Mutex<Option<ThreadedProducer<DefaultProducerContext>>>>,
    /// Round-robin start for callers that find every producer busy.
    next_producer: std::sync::atomic::AtomicUsize,
}

/// Transactional producers [`Log::produce`] may use at once.
const PRODUCE_CONCURRENCY: usize = 4;

impl KafkaLog {
    pub fn new(config: KafkaConfig) -> Self {
        Self {
            config,
            producers: (0..PRODUCE_CONCURRENCY).map(|_| Mutex::new(None)).collect(),
            next_producer: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    pub fn config(&self) -> &KafkaConfig {
        &self.config
    }

    fn transactional_producer(
        &self,
        transactional_id: &str,
    ) -> Result<ThreadedProducer<DefaultProducerContext>, LogError> {
        let producer: ThreadedProducer<DefaultProducerContext> = client_config(&self.config)
            .set("transactional.id", transactional_id)
            .set(
                "transaction.timeout.ms",
                TRANSACTION_TIMEOUT.as_millis().to_string(),
            )
            .set("enable.idempotence", "true")
            // One size budget for every record howk writes (librdkafka's default is 1,000,000
            // bytes, below what stages derive from a 1 MiB input: review C2).
            .set("message.max.bytes", MAX_MESSAGE_BYTES.to_string())
            // Java clients' default, so howk and other producers agree on a key's partition.
            .set("partitioner", "murmur2_random")
            .set("linger.ms", "5")
            .create()
            .map_err(kafka("creating the transactional producer"))?;
        producer
            .init_transactions(self.config.request_timeout)
            .map_err(kafka("initialising transactions"))?;
        producer
            .begin_transaction()
            .map_err(kafka("beginning a transaction"))?;
        Ok(producer)
    }
}

fn base_record<'a>(record: &'a OutRecord) -> BaseRecord<'a, [u8], [u8]> {
    let mut base = BaseRecord::to(&record.topic).key(&record.key[..]);
    if let Some(value) = &record.value {
        base = base.payload(&value[..]);
    }
    if let Some(partition) = record.partition {
        base = base.partition(partition);
    }
    base
}

/// Enqueues a record, waiting for room when the local queue is full.
fn send_to(
    producer: &ThreadedProducer<DefaultProducerContext>,
    record: &OutRecord,
) -> Result<(), LogError> {
    let mut base = base_record(record);
    loop {
        match producer.send(base) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                base = returned;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge), _)) => {
                return Err(LogError::TooLarge {
                    topic: record.topic.to_string(),
                    bytes: super::record_bytes(record),
                    limit: MAX_MESSAGE_BYTES,
                });
            }
            Err((source, _)) => {
                return Err(LogError::Kafka {
                    operation: "producing a record",
                    source,
                });
            }
        }
    }
}

/// Waits until every sent record is acknowledged (or `timeout`). rdkafka's `commit_transaction`
/// flushes first by polling the event queue in 100 ms steps, but a `ThreadedProducer`'s own
/// thread drains that queue, so each commit slept ~100 ms (measured: 101 ms per commit). Once
/// nothing is in flight, that flush returns at once. `flush(0)` is a non-blocking check that
/// also makes librdkafka send what it lingers on.
fn wait_flushed(producer: &ThreadedProducer<DefaultProducerContext>, timeout: Duration) {
    let deadline = std::time::Instant::now() + timeout;
    while producer.flush(Duration::ZERO).is_err() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_micros(500));
    }
}

/// Commits the producer's open transaction with `offsets`, then opens the next one. An abortable
/// failure aborts (nothing of the transaction becomes visible) and is returned: the caller's
/// tasks must then rebuild from the log, which the stream thread does by restarting.
fn commit_transaction(
    producer: &ThreadedProducer<DefaultProducerContext>,
    consumer: Option<&BaseConsumer<MemberContext>>,
    offsets: &HashMap<TopicPartition, i64>,
    timeout: Duration,
) -> Result<(), LogError> {
    let result = (|| {
        if let Some(consumer) = consumer
            && !offsets.is_empty()
        {
            let mut list = TopicPartitionList::new();
            for (tp, offset) in offsets {
                list.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(*offset))
                    .map_err(kafka("listing offsets"))?;
            }
            let metadata = consumer
                .group_metadata()
                .ok_or_else(|| LogError::Fenced("the consumer has no group metadata".to_owned()))?;
            producer
                .send_offsets_to_transaction(&list, &metadata, timeout)
                .map_err(kafka("sending offsets to the transaction"))?;
        }
        wait_flushed(producer, timeout);
        producer
            .commit_transaction(timeout)
            .map_err(kafka("committing the transaction"))
    })();
    if let Err(error) = result {
        let _ = producer.abort_transaction(timeout);
        let _ = producer.begin_transaction();
        return Err(error);
    }
    producer
        .begin_transaction()
        .map_err(kafka("beginning a transaction"))
}

impl Log for KafkaLog {
    type Member = KafkaMember;
    type Reader = KafkaReader;

    fn join(
        &self,
        group: &str,
        instance_id: &str,
        topics: &[Arc<str>],
    ) -> Result<KafkaMember, LogError> {
        let producer = self.transactional_producer(&format!("{group}-{instance_id}"))?;
        let shared = Arc::new(MemberShared {
            producer,
            staged: Mutex::new(HashMap::new()),
            events: Mutex::new(VecDeque::new()),
            failure: Mutex::new(None),
            timeout: self.config.request_timeout,
            poisoned: std::sync::atomic::AtomicBool::new(false),
            changelogs: Mutex::new(HashMap::new()),
            revoked_ends: Mutex::new(HashMap::new()),
        });
        let consumer: BaseConsumer<MemberContext> = client_config(&self.config)
            .set("group.id", group)
            .set("group.instance.id", instance_id)
            .set(
                "session.timeout.ms",
                SESSION_TIMEOUT.as_millis().to_string(),
            )
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_committed")
            // Tasks restore their stores on the polling thread (up to RESTORE_TIMEOUT, 600 s):
            // past librdkafka's 300 s default the member would be kicked out mid-restore, lose
            // the assignment, and restore again, forever.
            .set(
                "max.poll.interval.ms",
                MAX_POLL_INTERVAL.as_millis().to_string(),
            )
            .set(
                "statistics.interval.ms",
                STATISTICS_INTERVAL.as_millis().to_string(),
            )
            .create_with_context(MemberContext {
                shared: Arc::clone(&shared),
            })
            .map_err(kafka("creating the group consumer"))?;
        let names: Vec<&str> = topics.iter().map(|t| &**t).collect();
        consumer
            .subscribe(&names)
            .map_err(kafka("subscribing to the input topics"))?;
        Ok(KafkaMember { consumer, shared })
    }

    fn reader(&self) -> Result<KafkaReader, LogError> {
        let consumer: BaseConsumer<ReaderContext> = client_config(&self.config)
            .set("group.id", "howk-reader")
            .set("enable.auto.commit", "false")
            // A replay from offset 0 of a topic whose first segments retention deleted must
            // start at the oldest record left, not jump to the end (librdkafka's default),
            // which would rebuild an empty store (review M2).
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "true")
            .set("isolation.level", "read_committed")
            // A restore ends at an empty fetch; the default 500 ms wait for data would make every
            // task's start that much slower.
            .set("fetch.wait.max.ms", "10")
            .create_with_context(ReaderContext)
            .map_err(kafka("creating a reader"))?;
        Ok(KafkaReader {
            consumer,
            topic: None,
        })
    }

    fn produce(&self, records: Vec<OutRecord>) -> Result<(), LogError> {
        // A free producer if there is one, else wait for one in turn.
        let mut guard = match self.producers.iter().find_map(|slot| slot.try_lock().ok()) {
            Some(guard) => guard,
            None => {
                let turn = self
                    .next_producer
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.producers[turn % PRODUCE_CONCURRENCY]
                    .lock()
                    .expect("producer lock")
            }
        };
        if guard.is_none() {
            let id = format!("howk-producer-{}", ulid::Ulid::new());
            *guard = Some(self.transactional_producer(&id)?);
        }
        let producer = guard.as_ref().expect("made above");
        for record in &records {
            if let Err(error) = send_to(producer, record) {
                let _ = producer.abort_transaction(self.config.request_timeout);
                let _ = producer.begin_transaction();
                return Err(error);
            }
        }
        commit_transaction(producer, None, &HashMap::new(), self.config.request_timeout)
    }

    fn partitions(&self, topic: &str) -> Result<i32, LogError> {
        let consumer: BaseConsumer = client_config(&self.config)
            .create()
            .map_err(kafka("creating a metadata client"))?;
        let metadata = consumer
            .fetch_metadata(Some(topic), self.config.request_timeout)
            .map_err(kafka("fetching topic metadata"))?;
        match metadata.topics().first() {
            Some(found) if found.error().is_none() && !found.partitions().is_empty() => {
                Ok(found.partitions().len() as i32)
            }
            _ => Err(LogError::UnknownTopic(topic.to_owned())),
        }
    }
}

/// What the member and its rebalance callback share.
struct MemberShared {
    producer: ThreadedProducer<DefaultProducerContext>,
    /// Offsets the next commit includes.
    staged: Mutex<HashMap<TopicPartition, i64>>,
    /// Assignments and revocations seen by the callback, handed to the next polls.
    events: Mutex<VecDeque<Event>>,
    /// A commit that failed inside the callback, reported by the next poll.
    failure: Mutex<Option<LogError>>,
    timeout: Duration,
    /// Set once a send or a commit failed: what is staged no longer matches what the open
    /// transaction holds (its outputs were aborted, or only some of a record's were sent), so
    /// nothing this member still holds may be committed. A revocation then aborts, like a lost
    /// assignment — including the one librdkafka runs when the consumer closes, which would
    /// otherwise commit the staged offsets of aborted work in a fresh, empty transaction
    /// (review H2).
    poisoned: std::sync::atomic::AtomicBool,
    /// Source partition → the changelog partitions of its task (`track_changelogs`).
    changelogs: Mutex<HashMap<TopicPartition, Vec<TopicPartition>>>,
    /// Source partition → its changelogs' ends, recorded at its revocation.
    revoked_ends: Mutex<HashMap<TopicPartition, HashMap<TopicPartition, i64>>>,
}

impl MemberShared {
    fn poison(&self) {
        self.poisoned
            .store(true, std::sync::atomic::Ordering::Release);
        self.staged.lock().expect("staged lock").clear();
    }

    fn is_poisoned(&self) -> bool {
        self.poisoned.load(std::sync::atomic::Ordering::Acquire)
    }
}

struct MemberContext {
    shared: Arc<MemberShared>,
}

impl ClientContext for MemberContext {
    /// librdkafka's statistics (every `STATISTICS_INTERVAL`) carry each assigned partition's
    /// lag behind its end: their sum is the `howk_consumer_lag_records` gauge.
    fn stats(&self, statistics: rdkafka::Statistics) {
        let lag: i64 = statistics
            .topics
            .values()
            .flat_map(|topic| topic.partitions.values())
            // -1 is "unknown" and partition -1 is librdkafka's internal UA partition.
            .filter(|partition| partition.partition >= 0 && partition.consumer_lag >= 0)
            .map(|partition| partition.consumer_lag)
            .sum();
        crate::metrics::metrics().consumer_lag.set(lag);
    }
}

/// How often a group member reports statistics (its consumer lag).
const STATISTICS_INTERVAL: Duration = Duration::from_secs(5);

fn topic_partitions(list: &TopicPartitionList) -> Vec<TopicPartition> {
    list.elements()
        .iter()
        .map(|e| TopicPartition::new(e.topic(), e.partition()))
        .collect()
}

impl ConsumerContext for MemberContext {
    /// Revocation protocol: the stream thread is blocked in `poll` while this runs, so
    /// everything it has sent belongs to offsets it has staged. Committing here, before the
    /// partitions are released, hands the next owner exactly the committed state; what is
    /// still in flight is dropped by the closing tasks and redone by the next owner.
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            let mut staged = self.shared.staged.lock().expect("staged lock");
            let revoked = topic_partitions(list);
            // A lost assignment (session expired, coordinator failover) cannot commit: abort.
            // A commit that fails (a fenced member) has aborted too. Either way the work since
            // the last commit is gone, and the tasks must not pretend otherwise.
            let poisoned = self.shared.is_poisoned();
            let committed = if poisoned || consumer.assignment_lost() {
                if poisoned {
                    tracing::warn!("revocation after a failed send or commit; aborting");
                } else {
                    tracing::warn!("assignment lost; aborting the open transaction");
                }
                let _ = self.shared.producer.abort_transaction(self.shared.timeout);
                let _ = self.shared.producer.begin_transaction();
                false
            } else {
                match commit_transaction(
                    &self.shared.producer,
                    Some(consumer),
                    &staged,
                    self.shared.timeout,
                ) {
                    Ok(()) => true,
                    Err(error) => {
                        tracing::warn!(error = %error,
                            "commit on revocation failed; the partitions' work is redone");
                        false
                    }
                }
            };
            if committed {
                // Still owned: nobody else can have written these changelogs since the commit,
                // so their ends now are exactly what the closing tasks' stores hold (review H5).
                // Once this callback returns the next owner may write to them.
                let changelogs = self.shared.changelogs.lock().expect("changelogs lock");
                let mut recorded = self.shared.revoked_ends.lock().expect("revoked ends lock");
                for source in &revoked {
                    let mut ends = HashMap::new();
                    for changelog in changelogs.get(source).into_iter().flatten() {
                        match consumer.fetch_watermarks(
                            &changelog.topic,
                            changelog.partition,
                            self.shared.timeout,
                        ) {
                            Ok((_, high)) => {
                                ends.insert(changelog.clone(), high);
                            }
                            Err(error) => tracing::warn!(%changelog, error = %error,
                                "cannot record a changelog end; its store will be rebuilt"),
                        }
                    }
                    recorded.insert(source.clone(), ends);
                }
            }
            staged.retain(|tp, _| !revoked.contains(tp));
            if !committed {
                // Offsets staged for partitions we keep describe aborted work as well.
                staged.clear();
            }
            if !revoked.is_empty() {
                let mut events = self.shared.events.lock().expect("events lock");
                events.push_back(if committed {
                    Event::Revoked(revoked)
                } else {
                    Event::Lost(revoked)
                });
            }
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(list) = rebalance {
            let assigned = topic_partitions(list);
            if !assigned.is_empty() {
                let mut events = self.shared.events.lock().expect("events lock");
                events.push_back(Event::Assigned(assigned));
            }
        }
    }
}

/// A consumer-group member of the Kafka log.
pub struct KafkaMember {
    consumer: BaseConsumer<MemberContext>,
    shared: Arc<MemberShared>,
}

fn record_of<M: Message>(message: &M) -> Record {
    Record {
        topic: Arc::from(message.topic()),
        partition: message.partition(),
        offset: message.offset(),
        key: message.key().map(bytes::Bytes::copy_from_slice),
        value: message.payload().map(bytes::Bytes::copy_from_slice),
        timestamp_ms: message.timestamp().to_millis().unwrap_or(0),
    }
}

impl KafkaMember {
    fn queued(&self) -> Result<Option<Event>, LogError> {
        if let Some(error) = self.shared.failure.lock().expect("failure lock").take() {
            return Err(error);
        }
        Ok(self.shared.events.lock().expect("events lock").pop_front())
    }
}

impl GroupMember for KafkaMember {
    fn poll(&mut self, timeout: Duration) -> Result<Option<Event>, LogError> {
        if let Some(event) = self.queued()? {
            return Ok(Some(event));
        }
        let polled = self.consumer.poll(timeout);
        // A rebalance seen during this poll comes first: its records follow it.
        let message = match polled {
            None => None,
            Some(Ok(message)) => Some(record_of(&message)),
            // A fatal error (this member's instance id fenced by another, after a broker
            // restart say) ends the consumer: nothing comes from it again. The thread restarts
            // with a fresh member rather than idle on its partitions forever.
            Some(Err(source @ KafkaError::MessageConsumptionFatal(_))) => {
                return Err(kafka("poll")(source));
            }
            Some(Err(source)) => {
                tracing::warn!(error = %source, "consumer error");
                None
            }
        };
        if let Some(event) = self.queued()? {
            if let Some(record) = message {
                self.shared
                    .events
                    .lock()
                    .expect("events lock")
                    .push_back(Event::Record(record));
            }
            return Ok(Some(event));
        }
        Ok(message.map(Event::Record))
    }

    fn send(&mut self, record: OutRecord) -> Result<(), LogError> {
        let result = send_to(&self.shared.producer, &record);
        // A record refused for its size was never enqueued: the transaction is intact.
        if let Err(error) = &result
            && !matches!(error, LogError::TooLarge { .. })
        {
            self.shared.poison();
        }
        result
    }

    fn stage_offsets(&mut self, offsets: &[(TopicPartition, i64)]) {
        let mut staged = self.shared.staged.lock().expect("staged lock");
        for (tp, offset) in offsets {
            staged.insert(tp.clone(), *offset);
        }
    }

    fn commit(&mut self) -> Result<(), LogError> {
        if self.shared.is_poisoned() {
            return Err(LogError::Poisoned);
        }
        let staged = self.shared.staged.lock().expect("staged lock");
        let result = commit_transaction(
            &self.shared.producer,
            Some(&self.consumer),
            &staged,
            self.shared.timeout,
        );
        drop(staged);
        if result.is_err() {
            self.shared.poison();
        }
        result
    }

    fn committed(&self, partition: &TopicPartition) -> Result<Option<i64>, LogError> {
        let mut list = TopicPartitionList::new();
        list.add_partition(&partition.topic, partition.partition);
        let committed = self
            .consumer
            .committed_offsets(list, self.shared.timeout)
            .map_err(kafka("reading committed offsets"))?;
        Ok(committed
            .find_partition(&partition.topic, partition.partition)
            .and_then(|e| match e.offset() {
                Offset::Offset(offset) => Some(offset),
                _ => None,
            }))
    }

    fn track_changelogs(&mut self, source: &TopicPartition, changelogs: Vec<TopicPartition>) {
        self.shared
            .changelogs
            .lock()
            .expect("changelogs lock")
            .insert(source.clone(), changelogs);
    }

    fn revoked_changelog_ends(&mut self, source: &TopicPartition) -> HashMap<TopicPartition, i64> {
        self.shared
            .changelogs
            .lock()
            .expect("changelogs lock")
            .remove(source);
        self.shared
            .revoked_ends
            .lock()
            .expect("revoked ends lock")
            .remove(source)
            .unwrap_or_default()
    }

    fn pause(&mut self, partition: &TopicPartition, paused: bool) -> Result<(), LogError> {
        let mut list = TopicPartitionList::new();
        list.add_partition(&partition.topic, partition.partition);
        if paused {
            self.consumer.pause(&list)
        } else {
            self.consumer.resume(&list)
        }
        .map_err(kafka("pausing or resuming a partition"))
    }
}

/// Errors a client recovers from by itself once the broker is back.
fn is_transient(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::BrokerTransportFailure
                | RDKafkaErrorCode::AllBrokersDown
                | RDKafkaErrorCode::Resolve
                | RDKafkaErrorCode::OperationTimedOut
                | RDKafkaErrorCode::RequestTimedOut
                | RDKafkaErrorCode::NetworkException
                | RDKafkaErrorCode::NotCoordinator
                | RDKafkaErrorCode::CoordinatorNotAvailable
                | RDKafkaErrorCode::LeaderNotAvailable
                | RDKafkaErrorCode::NotLeaderForPartition
        )
    )
}

/// A reader's client context: end-of-partition is how a reader learns it caught up, not an
/// error worth a log line.
pub struct ReaderContext;

impl ClientContext for ReaderContext {
    fn error(&self, error: KafkaError, reason: &str) {
        let end_of_partition = matches!(error, KafkaError::PartitionEOF(_))
            || error.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF);
        if !end_of_partition {
            tracing::warn!(error = %error, reason, "kafka reader error");
        }
    }
}

impl ConsumerContext for ReaderContext {}

/// Reads partitions of one topic at a time, without a group.
pub struct KafkaReader {
    consumer: BaseConsumer<ReaderContext>,
    /// The assigned topic: librdkafka's end-of-partition signal names only the partition.
    topic: Option<Arc<str>>,
}

impl TopicReader for KafkaReader {
    fn assign(&mut self, partitions: &[(TopicPartition, i64)]) -> Result<(), LogError> {
        let mut list = TopicPartitionList::new();
        for (tp, offset) in partitions {
            list.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(*offset))
                .map_err(kafka("listing reader offsets"))?;
        }
        self.topic = partitions.first().map(|(tp, _)| Arc::clone(&tp.topic));
        debug_assert!(
            partitions
                .iter()
                .all(|(tp, _)| Some(&tp.topic) == self.topic.as_ref()),
            "a reader reads one topic"
        );
        self.consumer
            .assign(&list)
            .map_err(kafka("assigning reader partitions"))
    }

    fn poll(&mut self, timeout: Duration) -> Result<Option<ReadEvent>, LogError> {
        match self.consumer.poll(timeout) {
            None => Ok(None),
            Some(Ok(message)) => Ok(Some(ReadEvent::Record(record_of(&message)))),
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                let topic = self.topic.clone().unwrap_or_else(|| Arc::from(""));
                Ok(Some(ReadEvent::EndOfPartition(TopicPartition {
                    topic,
                    partition,
                })))
            }
            // The broker is away (restarting, unreachable): librdkafka reconnects by itself, so
            // the read goes on, bounded by its caller's deadline.
            Some(Err(source)) if is_transient(&source) => {
                tracing::debug!(error = %source, "reader waiting for the broker");
                Ok(None)
            }
            Some(Err(source)) => Err(LogError::Kafka {
                operation: "reading a partition",
                source,
            }),
        }
    }

    fn end_offset(&mut self, partition: &TopicPartition) -> Result<i64, LogError> {
        let (_, high) = self
            .consumer
            .fetch_watermarks(
                &partition.topic,
                partition.partition,
                Duration::from_secs(10),
            )
            .map_err(kafka("fetching watermarks"))?;
        Ok(high)
    }

    fn offset_for_time(
        &mut self,
        partition: &TopicPartition,
        time_ms: i64,
    ) -> Result<i64, LogError> {
        let mut query = TopicPartitionList::new();
        query
            .add_partition_offset(
                &partition.topic,
                partition.partition,
                Offset::Offset(time_ms),
            )
            .map_err(kafka("building an offsets-for-times query"))?;
        let found = self
            .consumer
            .offsets_for_times(query, Duration::from_secs(10))
            .map_err(kafka("looking up offsets for times"))?;
        match found
            .find_partition(&partition.topic, partition.partition)
            .map(|element| element.offset())
        {
            Some(Offset::Offset(offset)) => Ok(offset),
            // No record at or after that time: the end.
            _ => self.end_offset(partition),
        }
    }
}
