//! The `Processor` seam, with Kafka Streams' lifecycle: created (stores restored) when its
//! partition is assigned, `process` per record, `punctuate` on wall-clock time, `close` on
//! revocation or shutdown. One processor per task, i.e. per input partition.
//!
//! Bad input is an output, not an error: a processor writes a poison record to the dead letter
//! topic and returns `Ok`. `Err` means the task cannot go on (store I/O), and stops the thread.
//!
//! Asynchronous work (the HTTP call) is the one exception to "a record is done when `process`
//! returns": the deliver processor [`defer`](Context::defer)s the record and later receives a
//! [`Completion`] for it. The task holds back the outputs of every record behind an unfinished
//! one, so outputs and committed offsets always describe the same prefix of the partition. Any
//! completion finishes its record; a processor that wants to keep working on it must first move
//! the work into its store (in that completion's outputs), and then later completions for the
//! same offset find no record to hold back and their outputs go out at once.

use std::any::Any;
use std::sync::Arc;

use howk_state::store::{ChangelogRecord, StoreError};

use crate::log::{OutRecord, Record, TopicPartition};

/// Where a processor's writes go while it handles one record, completion or punctuation.
pub struct Context<'a> {
    pub now_ms: i64,
    outputs: &'a mut Vec<OutRecord>,
    deferred: bool,
}

impl<'a> Context<'a> {
    pub fn new(now_ms: i64, outputs: &'a mut Vec<OutRecord>) -> Self {
        Self {
            now_ms,
            outputs,
            deferred: false,
        }
    }

    /// Writes `value` to `topic` under `key` (partitioned by key).
    pub fn send(&mut self, topic: &Arc<str>, key: impl Into<Vec<u8>>, value: Vec<u8>) {
        self.outputs.push(OutRecord {
            topic: Arc::clone(topic),
            partition: None,
            key: key.into(),
            value: Some(value),
        });
    }

    /// Writes store changes to the store's changelog partition (the task's partition).
    pub fn changelog(&mut self, changelog: &TopicPartition, records: Vec<ChangelogRecord>) {
        self.outputs
            .extend(records.into_iter().map(|record| OutRecord {
                topic: Arc::clone(&changelog.topic),
                partition: Some(changelog.partition),
                key: record.key,
                value: record.value,
            }));
    }

    /// The record is not finished when `process` returns: a [`Completion`] will follow.
    pub fn defer(&mut self) {
        self.deferred = true;
    }

    pub fn is_deferred(&self) -> bool {
        self.deferred
    }
}

/// The end of deferred work, sent back to the stream thread.
pub struct Completion {
    pub partition: TopicPartition,
    /// The task incarnation that deferred the record; a completion for a closed (revoked)
    /// incarnation is dropped.
    pub generation: u64,
    pub offset: i64,
    pub payload: Box<dyn Any + Send>,
}

/// Sends completions of one task incarnation to its stream thread.
#[derive(Clone)]
pub struct CompletionSender {
    pub partition: TopicPartition,
    pub generation: u64,
    pub sender: std::sync::mpsc::Sender<Completion>,
    /// Wakes the stream thread's poll.
    pub waker: Arc<dyn Fn() + Send + Sync>,
}

impl CompletionSender {
    pub fn complete(&self, offset: i64, payload: Box<dyn Any + Send>) {
        let _ = self.sender.send(Completion {
            partition: self.partition.clone(),
            generation: self.generation,
            offset,
            payload,
        });
        (self.waker)();
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error("store failed")]
    Store(#[from] StoreError),
    #[error("restoring from the log failed")]
    Log(#[from] crate::log::LogError),
    #[error("{0}")]
    Other(String),
}

/// One stage's logic for one partition.
pub trait Processor: Send {
    /// Handles one input record.
    fn process(&mut self, record: Record, ctx: &mut Context<'_>) -> Result<(), TaskError>;

    /// Finishes a deferred record.
    fn complete(
        &mut self,
        _offset: i64,
        _payload: Box<dyn Any + Send>,
        _ctx: &mut Context<'_>,
    ) -> Result<(), TaskError> {
        Ok(())
    }

    /// Wall-clock work (due timers, expiry); called every punctuation interval.
    fn punctuate(&mut self, _ctx: &mut Context<'_>) -> Result<(), TaskError> {
        Ok(())
    }

    /// Records taken but not finished (running or queued), for backpressure.
    fn backlog(&self) -> usize {
        0
    }

    /// The changelog partitions of this task's stores: their end offsets are recorded when the
    /// partition is revoked, while it is still owned (see [`ChangelogEnds`]).
    fn changelogs(&self) -> Vec<TopicPartition> {
        Vec::new()
    }

    /// A clean close: the last commit is done; write checkpoints at `ends`.
    fn close(&mut self, ends: &ChangelogEnds) -> Result<(), TaskError>;
}

/// Where a closing task's changelogs end, for its checkpoint.
#[derive(Debug, Clone)]
pub enum ChangelogEnds {
    /// The partition is still owned (a clean shutdown): read the ends now.
    ReadNow,
    /// The partition was revoked: the ends recorded inside the revocation, right after its
    /// commit and before the next owner could write (review H5). A changelog missing here
    /// gets no checkpoint, so the next open rebuilds it rather than trust an end read later,
    /// which could include the next owner's writes and make a return skip them.
    Recorded(std::collections::HashMap<TopicPartition, i64>),
}
