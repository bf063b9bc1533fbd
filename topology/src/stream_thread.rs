//! The stream thread (Kafka Streams' `StreamThread`): one OS thread that owns a group member,
//! its transactional producer and every task of the partitions assigned to it. It polls
//! records, hands each to its task's processor, collects completions of deferred work,
//! punctuates, and commits — outputs, changelog records and input offsets in one transaction
//! every `commit_interval`.
//!
//! Invariant that makes revocation safe: between two polls, every record sent to the producer
//! belongs to an input offset already staged. A revocation callback runs inside `poll`, so it can
//! commit the open transaction at any time and hand the next owner exactly the committed state.
//! Outputs of a record finished out of order wait in its task until every record before it in
//! the partition has finished (see [`Task`]).
//!
//! A failure (store I/O, a fenced or failed transaction) ends the thread with an error; the
//! caller restarts it, and tasks that did not close cleanly rebuild from their changelogs.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::log::{
    Event, GroupMember, Log, LogError, MAX_MESSAGE_BYTES, OutRecord, Record, TopicPartition,
    record_bytes,
};
use crate::metrics::metrics;
use crate::processor::{
    ChangelogEnds, Completion, CompletionSender, Context, Processor, TaskError,
};

/// Makes the processor of each assigned partition.
pub trait TaskFactory: Send + Sync {
    /// The input topics the group subscribes to.
    fn topics(&self) -> Vec<Arc<str>>;

    /// A processor for `partition`, its stores restored. `committed` is the group's committed
    /// offset of the partition (where processing resumes).
    fn create(
        &self,
        partition: &TopicPartition,
        committed: Option<i64>,
        completions: CompletionSender,
    ) -> Result<Box<dyn Processor>, TaskError>;
}

/// `processing.*` as the thread needs it.
#[derive(Debug, Clone)]
pub struct StreamConfig {
    pub group: String,
    /// Stable member id (static membership, transactional id).
    pub instance_id: String,
    pub commit_interval: Duration,
    /// How often processors punctuate (retry timers are due at this resolution).
    pub punctuate_interval: Duration,
    /// On shutdown, how long in-flight deliveries may finish before the thread commits what is
    /// done and leaves the rest to the next start.
    pub shutdown_grace: Duration,
    /// Where an output too large to write goes instead, as a dead letter.
    pub dead_letter_topic: Arc<str>,
}

/// The largest output sent as it is: the log's budget less room for a record's own fields.
const MAX_OUTPUT_BYTES: usize = MAX_MESSAGE_BYTES - 4096;

#[derive(Debug, thiserror::Error)]
pub enum ThreadError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("task {partition} failed")]
    Task {
        partition: TopicPartition,
        #[source]
        source: TaskError,
    },
}

/// Poll timeout while deliveries are in flight: completions are picked up at this pace.
const BUSY_POLL: Duration = Duration::from_millis(2);
/// Finished records held back per unit of the `max_in_flight` budget (see `backpressure`).
const HELD_SLOTS_PER_UNIT: usize = 10;

/// Poll timeout when idle.
const IDLE_POLL: Duration = Duration::from_millis(50);

pub(crate) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// One input partition's processor and the records it has not finished.
struct Task {
    partition: TopicPartition,
    processor: Box<dyn Processor>,
    generation: u64,
    /// Records taken, in offset order, with their outputs; `done` once finished. The outputs
    /// of a finished record are sent only when every record before it is finished too.
    slots: VecDeque<Slot>,
    paused: bool,
    dead_letter_topic: Arc<str>,
}

struct Slot {
    offset: i64,
    outputs: Vec<OutRecord>,
    done: bool,
}

impl Task {
    fn failed(&self, source: TaskError) -> ThreadError {
        ThreadError::Task {
            partition: self.partition.clone(),
            source,
        }
    }

    fn process(
        &mut self,
        record: Record,
        member: &mut impl GroupMember,
    ) -> Result<(), ThreadError> {
        let offset = record.offset;
        let mut outputs = Vec::new();
        let mut ctx = Context::new(now_ms(), &mut outputs);
        let result = self.processor.process(record, &mut ctx);
        let done = !ctx.is_deferred();
        result.map_err(|e| self.failed(e))?;
        self.slots.push_back(Slot {
            offset,
            outputs,
            done,
        });
        self.release(member)
    }

    fn complete(
        &mut self,
        completion: Completion,
        member: &mut impl GroupMember,
    ) -> Result<(), ThreadError> {
        let index = self
            .slots
            .binary_search_by_key(&completion.offset, |slot| slot.offset);
        let mut outputs = Vec::new();
        let mut ctx = Context::new(now_ms(), &mut outputs);
        self.processor
            .complete(completion.offset, completion.payload, &mut ctx)
            .map_err(|e| self.failed(e))?;
        let Ok(index) = index else {
            // The record's slot is released: the processor took the work out of the offset's
            // hands (the deliver stage's spilled webhooks live in its store), so what finishes
            // it stands on its own, like a punctuation's outputs.
            for output in outputs {
                self.send(member, output)?;
            }
            return Ok(());
        };
        let slot = &mut self.slots[index];
        slot.outputs.append(&mut outputs);
        slot.done = true;
        self.release(member)
    }

    fn punctuate(&mut self, member: &mut impl GroupMember) -> Result<(), ThreadError> {
        let mut outputs = Vec::new();
        let mut ctx = Context::new(now_ms(), &mut outputs);
        self.processor
            .punctuate(&mut ctx)
            .map_err(|e| self.failed(e))?;
        for output in outputs {
            self.send(member, output)?;
        }
        Ok(())
    }

    /// Sends one output. One too large for the log becomes an `invalid_record` dead letter with
    /// its first bytes in its place: a record that cannot be written must not fail the thread,
    /// which would redo (and re-POST) the partition's work in a loop forever (review C2). The
    /// stages keep their outputs within the budget; this is the net under them.
    fn send(&self, member: &mut impl GroupMember, output: OutRecord) -> Result<(), ThreadError> {
        let bytes = record_bytes(&output);
        if bytes <= MAX_OUTPUT_BYTES {
            return Ok(member.send(output)?);
        }
        tracing::error!(partition = %self.partition, topic = %output.topic, bytes,
            "an output is over the record budget; dead-lettering it instead");
        let raw = output.value.unwrap_or_default();
        let reason = format!(
            "a record of {bytes} bytes for {} is over the {MAX_OUTPUT_BYTES}-byte budget",
            output.topic
        );
        let letter = crate::stage::invalid_record_letter(&raw, reason, now_ms());
        member.send(OutRecord {
            topic: Arc::clone(&self.dead_letter_topic),
            partition: None,
            key: output.key,
            value: Some(serde_json::to_vec(&letter).expect("a dead letter serializes")),
        })?;
        Ok(())
    }

    /// Sends the outputs of the finished prefix and stages the offset after it.
    fn release(&mut self, member: &mut impl GroupMember) -> Result<(), ThreadError> {
        let mut next = None;
        while self.slots.front().is_some_and(|slot| slot.done) {
            let slot = self.slots.pop_front().expect("checked above");
            for output in slot.outputs {
                self.send(member, output)?;
            }
            next = Some(slot.offset + 1);
        }
        if let Some(next) = next {
            member.stage_offsets(&[(self.partition.clone(), next)]);
        }
        Ok(())
    }

    /// Pauses the partition while the processor holds too much, resumes at half. Records
    /// finished but held behind an unfinished one count a tenth: they cost only their outputs,
    /// and a burst behind a webhook that is about to spill must not stall the partition.
    fn backpressure(
        &mut self,
        member: &mut impl GroupMember,
        limit: usize,
    ) -> Result<(), LogError> {
        let backlog = self
            .processor
            .backlog()
            .max(self.slots.len() / HELD_SLOTS_PER_UNIT);
        if !self.paused && backlog >= limit {
            self.paused = true;
            member.pause(&self.partition, true)?;
        } else if self.paused && backlog < limit / 2 {
            self.paused = false;
            member.pause(&self.partition, false)?;
        }
        Ok(())
    }
}

/// Runs the thread until `shutdown` is set (then drains, commits and closes every task
/// cleanly) or a failure.
pub fn run<L: Log>(
    log: &L,
    factory: &dyn TaskFactory,
    config: &StreamConfig,
    max_in_flight: usize,
    shutdown: &AtomicBool,
    tasks_ready: &AtomicBool,
) -> Result<(), ThreadError> {
    tasks_ready.store(false, Ordering::Relaxed);
    metrics().tasks.set(0);
    let mut member = log.join(&config.group, &config.instance_id, &factory.topics())?;
    let (sender, receiver) = mpsc::channel::<Completion>();
    let waker: Arc<dyn Fn() + Send + Sync> = Arc::new(|| {});
    let mut tasks: HashMap<TopicPartition, Task> = HashMap::new();
    let mut generation = 0u64;
    let mut last_commit = Instant::now();
    let mut last_punctuate = Instant::now();
    let mut draining_since: Option<Instant> = None;
    let mut uncommitted = false;

    loop {
        if shutdown.load(Ordering::Relaxed) && draining_since.is_none() {
            tracing::info!("stream thread draining");
            draining_since = Some(Instant::now());
            for task in tasks.values_mut() {
                member.pause(&task.partition, true)?;
                task.paused = true;
            }
        }
        if let Some(since) = draining_since {
            let idle = tasks.values().all(|task| task.slots.is_empty());
            if idle || since.elapsed() >= config.shutdown_grace {
                break;
            }
        }

        let busy = tasks.values().any(|task| !task.slots.is_empty());
        match member.poll(if busy { BUSY_POLL } else { IDLE_POLL })? {
            Some(Event::Assigned(partitions)) => {
                for partition in partitions {
                    generation += 1;
                    let committed = member.committed(&partition)?;
                    let completions = CompletionSender {
                        partition: partition.clone(),
                        generation,
                        sender: sender.clone(),
                        waker: Arc::clone(&waker),
                    };
                    let processor =
                        factory
                            .create(&partition, committed, completions)
                            .map_err(|source| ThreadError::Task {
                                partition: partition.clone(),
                                source,
                            })?;
                    member.track_changelogs(&partition, processor.changelogs());
                    tracing::debug!(%partition, ?committed, "task created");
                    metrics().tasks.inc();
                    tasks.insert(
                        partition.clone(),
                        Task {
                            partition,
                            processor,
                            generation,
                            slots: VecDeque::new(),
                            paused: false,
                            dead_letter_topic: Arc::clone(&config.dead_letter_topic),
                        },
                    );
                }
                tasks_ready.store(true, Ordering::Relaxed);
            }
            Some(Event::Lost(partitions)) => {
                // Dropped without a clean checkpoint: the next owner rebuilds their stores.
                for partition in partitions {
                    let _ = member.revoked_changelog_ends(&partition);
                    if tasks.remove(&partition).is_some() {
                        metrics().tasks.dec();
                        tracing::warn!(%partition, "task lost; its uncommitted work is redone");
                    }
                }
            }
            Some(Event::Revoked(partitions)) => {
                // The callback committed; what is still in flight is the next owner's.
                for partition in partitions {
                    let ends = ChangelogEnds::Recorded(member.revoked_changelog_ends(&partition));
                    if let Some(mut task) = tasks.remove(&partition) {
                        metrics().tasks.dec();
                        task.processor.close(&ends).map_err(|e| task.failed(e))?;
                    }
                }
            }
            Some(Event::Record(record)) => {
                let partition = TopicPartition {
                    topic: Arc::clone(&record.topic),
                    partition: record.partition,
                };
                if let Some(task) = tasks.get_mut(&partition) {
                    task.process(record, &mut member)?;
                    uncommitted = true;
                }
            }
            None => {}
        }

        while let Ok(completion) = receiver.try_recv() {
            if let Some(task) = tasks.get_mut(&completion.partition)
                && task.generation == completion.generation
            {
                task.complete(completion, &mut member)?;
                uncommitted = true;
            }
        }

        if last_punctuate.elapsed() >= config.punctuate_interval {
            last_punctuate = Instant::now();
            for task in tasks.values_mut() {
                task.punctuate(&mut member)?;
            }
            uncommitted = true;
        }

        if draining_since.is_none() {
            for task in tasks.values_mut() {
                task.backpressure(&mut member, max_in_flight)?;
            }
        }

        if uncommitted && last_commit.elapsed() >= config.commit_interval {
            let started = Instant::now();
            member.commit()?;
            metrics().commits.inc();
            tracing::trace!(took_us = started.elapsed().as_micros() as u64, "committed");
            last_commit = Instant::now();
            uncommitted = false;
        }
    }

    member.commit()?;
    for (_, mut task) in tasks.drain() {
        metrics().tasks.dec();
        task.processor
            .close(&ChangelogEnds::ReadNow)
            .map_err(|e| task.failed(e))?;
    }
    tracing::info!("stream thread stopped cleanly");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::embedded::EmbeddedLog;
    use crate::log::{ReadEvent, TopicReader};
    use crate::topics::TopicSpec;

    /// Echoes each record to `out`; the value `big` becomes an output over the budget.
    struct Echo;

    impl Processor for Echo {
        fn process(&mut self, record: Record, ctx: &mut Context<'_>) -> Result<(), TaskError> {
            let value = record.value.unwrap_or_default();
            let value = if &value[..] == b"big" {
                vec![b'x'; MAX_MESSAGE_BYTES + 1]
            } else {
                value.to_vec()
            };
            ctx.send(&Arc::from("out"), b"k".to_vec(), value);
            Ok(())
        }

        fn close(&mut self, _: &ChangelogEnds) -> Result<(), TaskError> {
            Ok(())
        }
    }

    struct EchoFactory;

    impl TaskFactory for EchoFactory {
        fn topics(&self) -> Vec<Arc<str>> {
            vec![Arc::from("in")]
        }

        fn create(
            &self,
            _: &TopicPartition,
            _: Option<i64>,
            _: CompletionSender,
        ) -> Result<Box<dyn Processor>, TaskError> {
            Ok(Box::new(Echo))
        }
    }

    fn values(log: &EmbeddedLog, topic: &str) -> Vec<Vec<u8>> {
        let mut reader = log.reader().unwrap();
        reader
            .assign(&[(TopicPartition::new(topic, 0), 0)])
            .unwrap();
        let mut values = Vec::new();
        while let Some(ReadEvent::Record(record)) = reader.poll(Duration::from_millis(10)).unwrap()
        {
            values.push(record.value.unwrap_or_default().to_vec());
        }
        values
    }

    #[test]
    fn an_output_over_the_budget_is_dead_lettered_and_the_thread_goes_on() {
        let spec = |name: &str| TopicSpec {
            name: name.into(),
            partitions: 1,
            compacted: false,
        };
        let log =
            Arc::new(EmbeddedLog::open(None, &[spec("in"), spec("out"), spec("dead")]).unwrap());
        let input: Arc<str> = Arc::from("in");
        log.produce(
            ["a", "big", "b"]
                .iter()
                .map(|value| OutRecord {
                    topic: Arc::clone(&input),
                    partition: Some(0),
                    key: b"k".to_vec(),
                    value: Some(value.as_bytes().to_vec()),
                })
                .collect(),
        )
        .unwrap();
        let config = StreamConfig {
            group: "g".into(),
            instance_id: "i".into(),
            commit_interval: Duration::from_millis(10),
            punctuate_interval: Duration::from_millis(100),
            shutdown_grace: Duration::from_secs(1),
            dead_letter_topic: Arc::from("dead"),
        };
        let shutdown = Arc::new(AtomicBool::new(false));
        let thread = {
            let (log, shutdown) = (Arc::clone(&log), Arc::clone(&shutdown));
            std::thread::spawn(move || {
                run(
                    &*log,
                    &EchoFactory,
                    &config,
                    100,
                    &shutdown,
                    &AtomicBool::new(false),
                )
            })
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while values(&log, "out").len() < 2 {
            assert!(Instant::now() < deadline, "outputs never arrived");
            std::thread::sleep(Duration::from_millis(10));
        }
        shutdown.store(true, Ordering::Relaxed);
        thread.join().unwrap().expect("the thread ends cleanly");

        assert_eq!(values(&log, "out"), [b"a".to_vec(), b"b".to_vec()]);
        let letters = values(&log, "dead");
        assert_eq!(letters.len(), 1);
        let letter: serde_json::Value = serde_json::from_slice(&letters[0]).unwrap();
        assert_eq!(letter["reason_type"], "invalid_record");
        assert!(
            letter["reason"].as_str().unwrap().contains("budget"),
            "{letter}"
        );
        assert_eq!(letter["webhook"]["raw_bytes"], MAX_MESSAGE_BYTES + 1);
    }
}
