//! The embedded log: topics, partitions, offsets, consumer-group offsets and transactions in one
//! process, for `howk dev` and the topology test driver. Same semantics as the Kafka log where
//! the topology depends on them: a key always lands on the same partition, a member's sent
//! records and staged offsets become visible together on commit (read_committed), and a
//! compacted topic keeps only the latest record per key (offsets keep their numbers).
//!
//! Persistence (when opened on a directory): one append-only file of committed transactions,
//! each frame `len (u32 LE) ‖ postcard(Frame)`. A crash mid-append leaves a short last frame,
//! which the next open cuts off — so a transaction is on disk whole or not at all.
//!
//! One member per group: the embedded log is one process, so a group's only member owns every
//! partition of its topics; a second `join` of the same group is an error.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{
    Event, GroupMember, Log, LogError, OutRecord, ReadEvent, Record, TopicPartition, TopicReader,
};
use crate::topics::TopicSpec;

/// One committed transaction as persisted.
#[derive(Serialize, Deserialize)]
struct Frame {
    records: Vec<StoredRecord>,
    /// (group, topic, partition, next offset).
    offsets: Vec<(String, String, i32, i64)>,
}

#[derive(Clone, Serialize, Deserialize)]
struct StoredRecord {
    topic: String,
    partition: i32,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    timestamp_ms: i64,
}

/// A stored record: key, value, timestamp (ms).
type Entry = (Option<Bytes>, Option<Bytes>, i64);

struct Partition {
    /// Index = offset; `None` once compaction removed the record.
    records: Vec<Option<Entry>>,
    /// Compacted topics: the offset of each key's latest record.
    latest: HashMap<Bytes, usize>,
}

struct Topic {
    compacted: bool,
    partitions: Vec<Partition>,
}

#[derive(Default)]
struct State {
    topics: HashMap<String, Topic>,
    group_offsets: HashMap<(String, String, i32), i64>,
    members: HashSet<String>,
}

struct Shared {
    state: Mutex<State>,
    /// Signalled on every commit, waking polls.
    appended: Condvar,
    file: Mutex<Option<(PathBuf, File)>>,
}

/// The embedded log; clones share it.
#[derive(Clone)]
pub struct EmbeddedLog {
    shared: Arc<Shared>,
}

fn storage_error(path: &Path, error: impl std::fmt::Display) -> LogError {
    LogError::Storage {
        path: path.display().to_string(),
        reason: error.to_string(),
    }
}

/// The partition of `key` among `count` (FNV-1a; any stable hash does).
fn partition_of(key: &[u8], count: usize) -> i32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in key {
        hash ^= u32::from(*byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    (hash % count as u32) as i32
}

impl State {
    fn apply(&mut self, frame: &Frame) -> Result<(), LogError> {
        for record in &frame.records {
            let topic = self
                .topics
                .get_mut(&record.topic)
                .ok_or_else(|| LogError::UnknownTopic(record.topic.clone()))?;
            let compacted = topic.compacted;
            let partition = topic
                .partitions
                .get_mut(record.partition as usize)
                .ok_or_else(|| LogError::UnknownTopic(record.topic.clone()))?;
            let key = record.key.clone().map(Bytes::from);
            let offset = partition.records.len();
            if compacted
                && let Some(key) = &key
                && let Some(previous) = partition.latest.insert(key.clone(), offset)
            {
                partition.records[previous] = None;
            }
            partition.records.push(Some((
                key,
                record.value.clone().map(Bytes::from),
                record.timestamp_ms,
            )));
        }
        for (group, topic, partition, offset) in &frame.offsets {
            self.group_offsets
                .insert((group.clone(), topic.clone(), *partition), *offset);
        }
        Ok(())
    }

    fn resolve(&self, record: OutRecord, now_ms: i64) -> Result<StoredRecord, LogError> {
        // The same size budget as the Kafka producers, so topology tests meet the same refusal.
        let bytes = super::record_bytes(&record);
        if bytes > super::MAX_MESSAGE_BYTES {
            return Err(LogError::TooLarge {
                topic: record.topic.to_string(),
                bytes,
                limit: super::MAX_MESSAGE_BYTES,
            });
        }
        let topic = self
            .topics
            .get(&*record.topic)
            .ok_or_else(|| LogError::UnknownTopic(record.topic.to_string()))?;
        let partition = match record.partition {
            Some(p) if (0..topic.partitions.len() as i32).contains(&p) => p,
            Some(p) => {
                return Err(LogError::Embedded(format!(
                    "{} has no partition {p}",
                    record.topic
                )));
            }
            None => partition_of(&record.key, topic.partitions.len()),
        };
        Ok(StoredRecord {
            topic: record.topic.to_string(),
            partition,
            key: Some(record.key),
            value: record.value,
            timestamp_ms: now_ms,
        })
    }

    fn read(&self, tp: &TopicPartition, offset: i64) -> Option<Result<Record, i64>> {
        let partition = self
            .topics
            .get(&*tp.topic)?
            .partitions
            .get(tp.partition as usize)?;
        let mut at = usize::try_from(offset).unwrap_or(0);
        while at < partition.records.len() {
            if let Some((key, value, timestamp_ms)) = &partition.records[at] {
                return Some(Ok(Record {
                    topic: Arc::clone(&tp.topic),
                    partition: tp.partition,
                    offset: at as i64,
                    key: key.clone(),
                    value: value.clone(),
                    timestamp_ms: *timestamp_ms,
                }));
            }
            at += 1;
        }
        Some(Err(at as i64))
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl EmbeddedLog {
    /// An embedded log holding `topics`; persisted under `dir` when given (and reloaded from it).
    pub fn open(dir: Option<&Path>, topics: &[TopicSpec]) -> Result<Self, LogError> {
        let mut state = State::default();
        for spec in topics {
            state.topics.insert(
                spec.name.clone(),
                Topic {
                    compacted: spec.compacted,
                    partitions: (0..spec.partitions.max(1))
                        .map(|_| Partition {
                            records: Vec::new(),
                            latest: HashMap::new(),
                        })
                        .collect(),
                },
            );
        }
        let file = match dir {
            None => None,
            Some(dir) => {
                std::fs::create_dir_all(dir).map_err(|e| storage_error(dir, e))?;
                let path = dir.join("log.bin");
                let good = load(&path, &mut state)?;
                let file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .read(true)
                    .open(&path)
                    .map_err(|e| storage_error(&path, e))?;
                // Cut a torn last frame, so appends follow the last whole transaction.
                file.set_len(good).map_err(|e| storage_error(&path, e))?;
                Some((path, file))
            }
        };
        Ok(Self {
            shared: Arc::new(Shared {
                state: Mutex::new(state),
                appended: Condvar::new(),
                file: Mutex::new(file),
            }),
        })
    }

    /// Applies one transaction: persisted first, then visible.
    fn commit_frame(&self, frame: Frame) -> Result<(), LogError> {
        if frame.records.is_empty() && frame.offsets.is_empty() {
            return Ok(());
        }
        let mut file = self.shared.file.lock().expect("log file lock");
        if let Some((path, file)) = file.as_mut() {
            let bytes = postcard::to_stdvec(&frame).map_err(|e| storage_error(path, e))?;
            let mut framed = Vec::with_capacity(bytes.len() + 4);
            framed.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            framed.extend_from_slice(&bytes);
            let before = file.metadata().map_err(|e| storage_error(path, e))?.len();
            if let Err(error) = file.write_all(&framed) {
                // A partly written frame would make the next open cut the log there, dropping
                // every later (acknowledged) frame with it: take it back.
                let _ = file.set_len(before);
                return Err(storage_error(path, error));
            }
        }
        let mut state = self.shared.state.lock().expect("log state lock");
        state.apply(&frame)?;
        drop(state);
        drop(file);
        self.shared.appended.notify_all();
        Ok(())
    }

    /// Waits up to `timeout` for the next commit.
    fn wait(&self, timeout: Duration) {
        let state = self.shared.state.lock().expect("log state lock");
        let _ = self
            .shared
            .appended
            .wait_timeout(state, timeout)
            .expect("log state lock");
    }
}

/// Replays the frames in `path` into `state`; returns the length of the whole frames.
fn load(path: &Path, state: &mut State) -> Result<u64, LogError> {
    let mut bytes = Vec::new();
    match File::open(path) {
        Ok(mut file) => {
            file.read_to_end(&mut bytes)
                .map_err(|e| storage_error(path, e))?;
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(error) => return Err(storage_error(path, error)),
    }
    let mut at = 0usize;
    while at + 4 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        let Some(body) = bytes.get(at + 4..at + 4 + len) else {
            break;
        };
        let Ok(frame) = postcard::from_bytes::<Frame>(body) else {
            break;
        };
        state.apply(&frame)?;
        at += 4 + len;
    }
    if at < bytes.len() {
        tracing::warn!(path = %path.display(), kept = at, dropped = bytes.len() - at,
            "embedded log ends in a torn transaction; it is dropped");
    }
    Ok(at as u64)
}

impl Log for EmbeddedLog {
    type Member = EmbeddedMember;
    type Reader = EmbeddedReader;

    fn join(
        &self,
        group: &str,
        _instance_id: &str,
        topics: &[Arc<str>],
    ) -> Result<EmbeddedMember, LogError> {
        let mut state = self.shared.state.lock().expect("log state lock");
        let mut assignment = Vec::new();
        for topic in topics {
            let count = state
                .topics
                .get(&**topic)
                .ok_or_else(|| LogError::UnknownTopic(topic.to_string()))?
                .partitions
                .len();
            assignment.extend((0..count as i32).map(|p| TopicPartition {
                topic: Arc::clone(topic),
                partition: p,
            }));
        }
        if !state.members.insert(group.to_owned()) {
            return Err(LogError::Embedded(format!(
                "group {group} already has a member in this process"
            )));
        }
        Ok(EmbeddedMember {
            log: self.clone(),
            group: group.to_owned(),
            pending_assignment: Some(assignment),
            positions: Vec::new(),
            next: 0,
            paused: HashSet::new(),
            sent: Vec::new(),
            staged: HashMap::new(),
        })
    }

    fn reader(&self) -> Result<EmbeddedReader, LogError> {
        Ok(EmbeddedReader {
            log: self.clone(),
            positions: Vec::new(),
            next: 0,
        })
    }

    fn produce(&self, records: Vec<OutRecord>) -> Result<(), LogError> {
        let now = now_ms();
        let state = self.shared.state.lock().expect("log state lock");
        let records = records
            .into_iter()
            .map(|r| state.resolve(r, now))
            .collect::<Result<Vec<_>, _>>()?;
        drop(state);
        self.commit_frame(Frame {
            records,
            offsets: Vec::new(),
        })
    }

    fn partitions(&self, topic: &str) -> Result<i32, LogError> {
        let state = self.shared.state.lock().expect("log state lock");
        state
            .topics
            .get(topic)
            .map(|t| t.partitions.len() as i32)
            .ok_or_else(|| LogError::UnknownTopic(topic.to_owned()))
    }
}

/// Where a reader or member is in one partition.
struct Position {
    tp: TopicPartition,
    offset: i64,
    /// A reader reports each reached end once, until new records arrive.
    at_end_reported: bool,
}

/// Round-robin over positions: the next record of the first partition that has one.
fn next_record(
    log: &EmbeddedLog,
    positions: &mut [Position],
    start: &mut usize,
    skip: &HashSet<TopicPartition>,
) -> Option<Result<Record, TopicPartition>> {
    let state = log.shared.state.lock().expect("log state lock");
    let count = positions.len();
    for step in 0..count {
        let index = (*start + step) % count;
        let position = &mut positions[index];
        if skip.contains(&position.tp) {
            continue;
        }
        match state.read(&position.tp, position.offset) {
            Some(Ok(record)) => {
                position.offset = record.offset + 1;
                position.at_end_reported = false;
                *start = (index + 1) % count;
                return Some(Ok(record));
            }
            Some(Err(end)) => {
                position.offset = end;
                if !position.at_end_reported {
                    position.at_end_reported = true;
                    *start = (index + 1) % count;
                    return Some(Err(position.tp.clone()));
                }
            }
            None => {}
        }
    }
    None
}

/// A reader of the embedded log.
pub struct EmbeddedReader {
    log: EmbeddedLog,
    positions: Vec<Position>,
    next: usize,
}

impl TopicReader for EmbeddedReader {
    fn assign(&mut self, partitions: &[(TopicPartition, i64)]) -> Result<(), LogError> {
        self.positions = partitions
            .iter()
            .map(|(tp, offset)| Position {
                tp: tp.clone(),
                offset: *offset,
                at_end_reported: false,
            })
            .collect();
        self.next = 0;
        Ok(())
    }

    fn poll(&mut self, timeout: Duration) -> Result<Option<ReadEvent>, LogError> {
        let deadline = Instant::now() + timeout;
        loop {
            match next_record(
                &self.log,
                &mut self.positions,
                &mut self.next,
                &HashSet::new(),
            ) {
                Some(Ok(record)) => return Ok(Some(ReadEvent::Record(record))),
                Some(Err(tp)) => return Ok(Some(ReadEvent::EndOfPartition(tp))),
                None => {}
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            self.log.wait(left);
        }
    }

    fn end_offset(&mut self, partition: &TopicPartition) -> Result<i64, LogError> {
        let state = self.log.shared.state.lock().expect("log state lock");
        state
            .topics
            .get(&*partition.topic)
            .and_then(|t| t.partitions.get(partition.partition as usize))
            .map(|p| p.records.len() as i64)
            .ok_or_else(|| LogError::UnknownTopic(partition.topic.to_string()))
    }

    fn offset_for_time(
        &mut self,
        partition: &TopicPartition,
        time_ms: i64,
    ) -> Result<i64, LogError> {
        let state = self.log.shared.state.lock().expect("log state lock");
        let records = &state
            .topics
            .get(&*partition.topic)
            .and_then(|t| t.partitions.get(partition.partition as usize))
            .ok_or_else(|| LogError::UnknownTopic(partition.topic.to_string()))?
            .records;
        // Record times follow append order here (they are stamped when written).
        Ok(records
            .iter()
            .position(|entry| entry.as_ref().is_some_and(|(_, _, at)| *at >= time_ms))
            .unwrap_or(records.len()) as i64)
    }
}

/// The one member of a group on the embedded log.
pub struct EmbeddedMember {
    log: EmbeddedLog,
    group: String,
    /// Handed out by the first poll, as Kafka's first rebalance would.
    pending_assignment: Option<Vec<TopicPartition>>,
    positions: Vec<Position>,
    next: usize,
    paused: HashSet<TopicPartition>,
    /// The open transaction.
    sent: Vec<StoredRecord>,
    staged: HashMap<TopicPartition, i64>,
}

impl Drop for EmbeddedMember {
    fn drop(&mut self) {
        let mut state = self.log.shared.state.lock().expect("log state lock");
        state.members.remove(&self.group);
    }
}

impl GroupMember for EmbeddedMember {
    fn poll(&mut self, timeout: Duration) -> Result<Option<Event>, LogError> {
        if let Some(assignment) = self.pending_assignment.take() {
            let state = self.log.shared.state.lock().expect("log state lock");
            self.positions = assignment
                .iter()
                .map(|tp| Position {
                    tp: tp.clone(),
                    offset: state
                        .group_offsets
                        .get(&(self.group.clone(), tp.topic.to_string(), tp.partition))
                        .copied()
                        .unwrap_or(0),
                    at_end_reported: true,
                })
                .collect();
            return Ok(Some(Event::Assigned(assignment)));
        }
        let deadline = Instant::now() + timeout;
        loop {
            loop {
                match next_record(&self.log, &mut self.positions, &mut self.next, &self.paused) {
                    Some(Ok(record)) => return Ok(Some(Event::Record(record))),
                    // A member does not report ends; look at the next partition.
                    Some(Err(_)) => continue,
                    None => break,
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            self.log.wait(left);
        }
    }

    fn send(&mut self, record: OutRecord) -> Result<(), LogError> {
        let state = self.log.shared.state.lock().expect("log state lock");
        let stored = state.resolve(record, now_ms())?;
        self.sent.push(stored);
        Ok(())
    }

    fn stage_offsets(&mut self, offsets: &[(TopicPartition, i64)]) {
        for (tp, offset) in offsets {
            self.staged.insert(tp.clone(), *offset);
        }
    }

    fn commit(&mut self) -> Result<(), LogError> {
        let frame = Frame {
            records: std::mem::take(&mut self.sent),
            offsets: self
                .staged
                .drain()
                .map(|(tp, offset)| {
                    (
                        self.group.clone(),
                        tp.topic.to_string(),
                        tp.partition,
                        offset,
                    )
                })
                .collect(),
        };
        self.log.commit_frame(frame)
    }

    fn committed(&self, partition: &TopicPartition) -> Result<Option<i64>, LogError> {
        let state = self.log.shared.state.lock().expect("log state lock");
        Ok(state
            .group_offsets
            .get(&(
                self.group.clone(),
                partition.topic.to_string(),
                partition.partition,
            ))
            .copied())
    }

    fn pause(&mut self, partition: &TopicPartition, paused: bool) -> Result<(), LogError> {
        if paused {
            self.paused.insert(partition.clone());
        } else {
            self.paused.remove(partition);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn specs() -> Vec<TopicSpec> {
        vec![
            TopicSpec {
                name: "in".into(),
                partitions: 3,
                compacted: false,
            },
            TopicSpec {
                name: "table".into(),
                partitions: 1,
                compacted: true,
            },
        ]
    }

    fn out(topic: &str, key: &str, value: &str) -> OutRecord {
        OutRecord {
            topic: Arc::from(topic),
            partition: None,
            key: key.as_bytes().to_vec(),
            value: Some(value.as_bytes().to_vec()),
        }
    }

    fn drain(member: &mut EmbeddedMember) -> Vec<Record> {
        let mut records = Vec::new();
        while let Some(event) = member.poll(Duration::from_millis(10)).unwrap() {
            if let Event::Record(record) = event {
                records.push(record);
            }
        }
        records
    }

    #[test]
    fn same_key_same_partition_and_uncommitted_sends_are_invisible() {
        let log = EmbeddedLog::open(None, &specs()).unwrap();
        log.produce(vec![out("in", "a", "1"), out("in", "a", "2")])
            .unwrap();
        let mut member = log.join("g", "i", &[Arc::from("in")]).unwrap();
        let records = drain(&mut member);
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].partition, records[1].partition);
        assert_eq!(records[1].offset, records[0].offset + 1);

        member.send(out("in", "b", "x")).unwrap();
        assert!(drain(&mut member).is_empty(), "not visible before commit");
        member.commit().unwrap();
        assert_eq!(drain(&mut member).len(), 1);
    }

    #[test]
    fn committed_offsets_and_records_survive_a_reopen_and_a_torn_frame_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = EmbeddedLog::open(Some(dir.path()), &specs()).unwrap();
            log.produce(vec![out("in", "a", "1"), out("in", "a", "2")])
                .unwrap();
            let mut member = log.join("g", "i", &[Arc::from("in")]).unwrap();
            let first = drain(&mut member).remove(0);
            member.stage_offsets(&[(TopicPartition::new("in", first.partition), first.offset + 1)]);
            member.commit().unwrap();
        }
        // A crash in the middle of appending the next transaction.
        let mut file = OpenOptions::new()
            .append(true)
            .open(dir.path().join("log.bin"))
            .unwrap();
        file.write_all(&[200, 0, 0, 0, 1, 2]).unwrap();

        let log = EmbeddedLog::open(Some(dir.path()), &specs()).unwrap();
        let mut member = log.join("g", "i", &[Arc::from("in")]).unwrap();
        let records = drain(&mut member);
        assert_eq!(records.len(), 1, "resumes after the committed offset");
        assert_eq!(records[0].value.as_deref(), Some(&b"2"[..]));
        log.produce(vec![out("in", "c", "3")]).unwrap();
        assert_eq!(drain(&mut member).len(), 1, "appends after the cut");
    }

    #[test]
    fn compacted_topics_keep_the_latest_record_per_key() {
        let log = EmbeddedLog::open(None, &specs()).unwrap();
        log.produce(vec![
            out("table", "k", "1"),
            out("table", "j", "1"),
            out("table", "k", "2"),
        ])
        .unwrap();
        let mut reader = log.reader().unwrap();
        reader
            .assign(&[(TopicPartition::new("table", 0), 0)])
            .unwrap();
        let mut seen = Vec::new();
        while let Some(ReadEvent::Record(record)) = reader.poll(Duration::from_millis(10)).unwrap()
        {
            seen.push((record.offset, record.value.unwrap()));
        }
        assert_eq!(
            seen,
            [(1, Bytes::from_static(b"1")), (2, Bytes::from_static(b"2"))]
        );
    }

    #[test]
    fn a_second_member_of_a_group_is_refused() {
        let log = EmbeddedLog::open(None, &specs()).unwrap();
        let _member = log.join("g", "i", &[Arc::from("in")]).unwrap();
        assert!(log.join("g", "j", &[Arc::from("in")]).is_err());
    }
}
