//! Checkpoints: the changelog offsets a store has applied, kept in a small file beside it so a
//! clean restart resumes restoration from there instead of replaying the whole changelog.
//!
//! The file is replaced atomically (write a temporary file, sync, rename): a crash leaves the old
//! checkpoint or the new one, never half of one. A store without a checkpoint (first start, or a
//! crash that lost it) restores from the beginning of its changelog.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::store::StoreError;

/// Offsets by `topic` and partition: the next offset to read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub offsets: BTreeMap<String, BTreeMap<i32, i64>>,
}

impl Checkpoint {
    pub fn offset(&self, topic: &str, partition: i32) -> Option<i64> {
        self.offsets.get(topic)?.get(&partition).copied()
    }

    pub fn set(&mut self, topic: &str, partition: i32, next_offset: i64) {
        self.offsets
            .entry(topic.to_owned())
            .or_default()
            .insert(partition, next_offset);
    }

    /// The checkpoint at `path`; an empty one when there is no file.
    pub fn read(path: &Path) -> Result<Self, StoreError> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|error| StoreError::Checkpoint {
                path: path.display().to_string(),
                reason: error.to_string(),
            }),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(error) => Err(StoreError::Checkpoint {
                path: path.display().to_string(),
                reason: error.to_string(),
            }),
        }
    }

    /// Replaces the checkpoint at `path` atomically.
    pub fn write(&self, path: &Path) -> Result<(), StoreError> {
        let failed = |reason: String| StoreError::Checkpoint {
            path: path.display().to_string(),
            reason,
        };
        let temporary: PathBuf = path.with_extension("tmp");
        let bytes = serde_json::to_vec(self).map_err(|e| failed(e.to_string()))?;
        let mut file = std::fs::File::create(&temporary).map_err(|e| failed(e.to_string()))?;
        file.write_all(&bytes).map_err(|e| failed(e.to_string()))?;
        file.sync_all().map_err(|e| failed(e.to_string()))?;
        std::fs::rename(&temporary, path).map_err(|e| failed(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_a_missing_file_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("checkpoint");
        assert_eq!(Checkpoint::read(&path).unwrap(), Checkpoint::default());
        let mut checkpoint = Checkpoint::default();
        checkpoint.set("howk-timers-changelog", 3, 1200);
        checkpoint.write(&path).unwrap();
        let read = Checkpoint::read(&path).unwrap();
        assert_eq!(read.offset("howk-timers-changelog", 3), Some(1200));
        assert_eq!(read.offset("howk-timers-changelog", 4), None);
    }

    #[test]
    fn a_corrupt_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("checkpoint");
        std::fs::write(&path, b"{not json").unwrap();
        let error = Checkpoint::read(&path).unwrap_err().to_string();
        assert!(error.contains("checkpoint"), "{error}");
    }
}
