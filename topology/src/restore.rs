//! Opening a task's store: from the local RocksDB when its checkpoint says it closed cleanly,
//! else wiped and rebuilt from its changelog (ARCHITECTURE.md, "State stores").
//!
//! Protocol: opening a store deletes its checkpoint, so a crash leaves none behind; a clean
//! close writes it again with the changelog's end offset (every change of this task is
//! committed by then). A store with a checkpoint reads only the changelog after that offset; one
//! without is wiped — it may hold writes whose transaction never committed — and restored from
//! offset 0.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use howk_state::checkpoint::Checkpoint;
use howk_state::rocks::RocksStore;
use howk_state::store::{ChangelogRecord, Store, StoreError};

use crate::log::{ReadEvent, TopicPartition, TopicReader};
use crate::processor::{ChangelogEnds, TaskError};

/// How long restoring one store may take before the task gives up (and the thread restarts).
pub(crate) const RESTORE_TIMEOUT: Duration = Duration::from_secs(600);

/// A store being restored and where its checkpoint lives.
pub struct OpenedStore {
    pub store: RocksStore,
    /// Whether the local store was kept (clean close) rather than rebuilt.
    pub clean: bool,
    pub restored_records: u64,
    checkpoint: PathBuf,
    /// What the checkpoint said (offsets), when the store was kept.
    pub checkpointed: Checkpoint,
}

fn io_error(path: &Path, error: std::io::Error) -> StoreError {
    StoreError::Checkpoint {
        path: path.display().to_string(),
        reason: error.to_string(),
    }
}

/// Opens the store at `dir`, restoring it from `changelog` when given.
pub fn open_store(
    dir: &Path,
    changelog: Option<&TopicPartition>,
    reader: &mut dyn TopicReader,
) -> Result<OpenedStore, TaskError> {
    let checkpoint_path = dir.with_extension("checkpoint");
    let checkpoint = Checkpoint::read(&checkpoint_path)?;
    let clean = checkpoint_path.exists();
    if clean {
        std::fs::remove_file(&checkpoint_path).map_err(|e| io_error(&checkpoint_path, e))?;
    } else if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| io_error(dir, e))?;
    }
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent).map_err(|e| io_error(parent, e))?;
    }
    let mut store = RocksStore::open_task_store(dir)?;
    let mut restored_records = 0;
    if let Some(changelog) = changelog {
        let from = checkpoint
            .offset(&changelog.topic, changelog.partition)
            .filter(|_| clean)
            .unwrap_or(0);
        restored_records = replay(reader, changelog, from, None, |record| {
            let key = record.key.map(|k| k.to_vec()).unwrap_or_default();
            store.restore(&ChangelogRecord {
                key,
                value: record.value.map(|v| v.to_vec()),
            })?;
            Ok(())
        })?;
    }
    Ok(OpenedStore {
        store,
        clean,
        restored_records,
        checkpoint: checkpoint_path,
        checkpointed: if clean {
            checkpoint
        } else {
            Checkpoint::default()
        },
    })
}

impl OpenedStore {
    /// Where [`write_checkpoint`] writes.
    pub fn checkpoint_path(&self) -> PathBuf {
        self.checkpoint.clone()
    }
}

/// Marks `store` closed cleanly at the end of its changelog, after flushing it to disk. The end
/// is read now when the partition is still owned, else taken from what the revocation recorded;
/// without a recorded end no checkpoint is written (the next open rebuilds the store).
pub fn write_checkpoint(
    store: &RocksStore,
    path: &Path,
    changelog: &TopicPartition,
    ends: &ChangelogEnds,
    reader: &mut dyn TopicReader,
) -> Result<(), TaskError> {
    let end = match ends {
        ChangelogEnds::ReadNow => reader.end_offset(changelog)?,
        ChangelogEnds::Recorded(recorded) => match recorded.get(changelog) {
            Some(end) => *end,
            None => {
                tracing::warn!(%changelog, "no end recorded at revocation; the store will be rebuilt");
                return Ok(());
            }
        },
    };
    store.persist()?;
    let mut checkpoint = Checkpoint::default();
    checkpoint.set(&changelog.topic, changelog.partition, end);
    checkpoint.write(path)?;
    Ok(())
}

/// Marks `store` closed cleanly holding exactly `source` up to `next_offset` (a store whose
/// source topic is its changelog: the status store over `howk.results`), after flushing it.
pub fn write_source_checkpoint(
    store: &RocksStore,
    path: &Path,
    source: &TopicPartition,
    next_offset: i64,
) -> Result<(), TaskError> {
    store.persist()?;
    let mut checkpoint = Checkpoint::default();
    checkpoint.set(&source.topic, source.partition, next_offset);
    checkpoint.write(path)?;
    Ok(())
}

/// Reads `partition` from `from` until its end (or until offset `until`), calling `apply` on
/// each record; returns how many were applied.
pub fn replay(
    reader: &mut dyn TopicReader,
    partition: &TopicPartition,
    from: i64,
    until: Option<i64>,
    mut apply: impl FnMut(crate::log::Record) -> Result<(), TaskError>,
) -> Result<u64, TaskError> {
    if until.is_some_and(|until| until <= from) {
        return Ok(0);
    }
    reader.assign(&[(partition.clone(), from)])?;
    let deadline = Instant::now() + RESTORE_TIMEOUT;
    let mut applied = 0;
    loop {
        if Instant::now() > deadline {
            return Err(TaskError::Other(format!(
                "restoring {partition} did not reach its end within {RESTORE_TIMEOUT:?}"
            )));
        }
        match reader.poll(Duration::from_millis(200))? {
            // A reader is reused across restores: anything not from this partition is stale.
            Some(ReadEvent::Record(record))
                if record.partition != partition.partition || record.topic != partition.topic => {}
            Some(ReadEvent::EndOfPartition(end)) if end != *partition => {}
            Some(ReadEvent::Record(record)) => {
                let offset = record.offset;
                if until.is_some_and(|until| offset >= until) {
                    return Ok(applied);
                }
                apply(record)?;
                applied += 1;
                crate::metrics::metrics().restored_records.inc();
                if until.is_some_and(|until| offset + 1 >= until) {
                    return Ok(applied);
                }
            }
            Some(ReadEvent::EndOfPartition(_)) => return Ok(applied),
            None => {}
        }
    }
}
