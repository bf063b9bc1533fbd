//! The `Store` seam: an ordered key-value store whose writes are buffered until `commit`.
//!
//! Buffering is what ties a store to its changelog: the task commits the store at the same time
//! as it commits its Kafka transaction, producing the returned records to the changelog topic in
//! that transaction. Reads see the buffered writes (read-your-writes within a task).

/// A key and its value, as ranges return them.
pub type Entry = (Vec<u8>, Vec<u8>);

/// One changelog record: a key and its new value, `None` for a deletion (a tombstone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangelogRecord {
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store at {path} cannot be opened")]
    Open {
        path: String,
        #[source]
        source: rocksdb::Error,
    },
    #[error("store I/O failed")]
    Io(#[from] rocksdb::Error),
    #[error("key of {len} bytes is longer than the store allows ({max})")]
    KeyTooLong { len: usize, max: usize },
    #[error("checkpoint file {path} is unreadable: {reason}")]
    Checkpoint { path: String, reason: String },
}

/// An ordered key-value store with buffered writes.
pub trait Store {
    /// The value of `key`, buffered writes included.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// Buffers a write.
    fn put(&mut self, key: &[u8], value: &[u8]);

    /// Buffers a deletion.
    fn delete(&mut self, key: &[u8]);

    /// Up to `limit` entries with `from <= key < to`, in key order, buffered writes included.
    fn range(&self, from: &[u8], to: &[u8], limit: usize) -> Result<Vec<Entry>, StoreError>;

    /// Applies the buffered writes atomically and returns them, in key order, as changelog
    /// records.
    fn commit(&mut self) -> Result<Vec<ChangelogRecord>, StoreError>;

    /// Applies a changelog record read back during restoration (not logged again).
    fn restore(&mut self, record: &ChangelogRecord) -> Result<(), StoreError>;
}

/// A boxed store is a store, so owners can choose the implementation at run time.
impl<S: Store + ?Sized> Store for Box<S> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        (**self).get(key)
    }
    fn put(&mut self, key: &[u8], value: &[u8]) {
        (**self).put(key, value)
    }
    fn delete(&mut self, key: &[u8]) {
        (**self).delete(key)
    }
    fn range(&self, from: &[u8], to: &[u8], limit: usize) -> Result<Vec<Entry>, StoreError> {
        (**self).range(from, to, limit)
    }
    fn commit(&mut self) -> Result<Vec<ChangelogRecord>, StoreError> {
        (**self).commit()
    }
    fn restore(&mut self, record: &ChangelogRecord) -> Result<(), StoreError> {
        (**self).restore(record)
    }
}

/// Merges committed entries (`base`, in key order) with buffered writes in `[from, to)`.
pub(crate) fn merge_range(
    base: Vec<Entry>,
    pending: &std::collections::BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    from: &[u8],
    to: &[u8],
    limit: usize,
) -> Vec<Entry> {
    let mut merged: std::collections::BTreeMap<Vec<u8>, Vec<u8>> = base.into_iter().collect();
    for (key, value) in pending.range(from.to_vec()..to.to_vec()) {
        match value {
            Some(value) => merged.insert(key.clone(), value.clone()),
            None => merged.remove(key),
        };
    }
    merged.into_iter().take(limit).collect()
}

#[cfg(test)]
pub(crate) mod contract {
    //! The behaviour every `Store` must have, run against each implementation.
    use super::*;

    pub fn buffered_writes_are_visible_and_committed_as_changelog(store: &mut impl Store) {
        store.put(b"b", b"2");
        store.put(b"a", b"1");
        store.delete(b"c");
        assert_eq!(store.get(b"a").unwrap().as_deref(), Some(&b"1"[..]));
        let log = store.commit().unwrap();
        assert_eq!(
            log,
            [
                ChangelogRecord {
                    key: b"a".to_vec(),
                    value: Some(b"1".to_vec())
                },
                ChangelogRecord {
                    key: b"b".to_vec(),
                    value: Some(b"2".to_vec())
                },
                ChangelogRecord {
                    key: b"c".to_vec(),
                    value: None
                },
            ]
        );
        assert!(
            store.commit().unwrap().is_empty(),
            "nothing pending after a commit"
        );
        assert_eq!(store.get(b"b").unwrap().as_deref(), Some(&b"2"[..]));
    }

    pub fn range_merges_committed_and_buffered(store: &mut impl Store) {
        for key in [b"k1", b"k2", b"k3", b"k5"] {
            store.put(key, key);
        }
        store.commit().unwrap();
        store.delete(b"k2");
        store.put(b"k4", b"new");
        let keys: Vec<Vec<u8>> = store
            .range(b"k1", b"k5", 10)
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, [b"k1".to_vec(), b"k3".to_vec(), b"k4".to_vec()]);
        assert_eq!(store.range(b"k1", b"k9", 2).unwrap().len(), 2);
    }

    pub fn restore_applies_without_logging(store: &mut impl Store) {
        store
            .restore(&ChangelogRecord {
                key: b"x".to_vec(),
                value: Some(b"1".to_vec()),
            })
            .unwrap();
        store
            .restore(&ChangelogRecord {
                key: b"y".to_vec(),
                value: Some(b"2".to_vec()),
            })
            .unwrap();
        store
            .restore(&ChangelogRecord {
                key: b"y".to_vec(),
                value: None,
            })
            .unwrap();
        assert_eq!(store.get(b"x").unwrap().as_deref(), Some(&b"1"[..]));
        assert_eq!(store.get(b"y").unwrap(), None);
        assert!(store.commit().unwrap().is_empty());
    }
}
