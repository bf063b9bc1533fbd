//! A versioned store: every value a key has had, by the time it became valid. The scripts table
//! is one (ARCHITECTURE.md): live delivery joins with the **latest** version, a replay job can
//! join **as of** a webhook's `created_at`, and a deletion is a version too (a tombstone), so
//! "no script at that time" is answerable.
//!
//! Layout: key = `len(u16, BE) ‖ key ‖ valid_from (i64, sign-flipped BE)`, so one key's versions
//! are contiguous and ordered by time; value = `0` (deleted) or `1 ‖ bytes`.

use crate::store::{ChangelogRecord, Store, StoreError};

/// One version: valid from (ms), and the value (`None`: deleted).
pub type Version = (i64, Option<Vec<u8>>);

pub struct VersionedStore<S> {
    store: S,
}

/// A time as big-endian bytes that sort in time order (the sign bit flipped).
pub(crate) fn time_bytes(ms: i64) -> [u8; 8] {
    ((ms as u64) ^ (1 << 63)).to_be_bytes()
}

pub(crate) fn time_from_bytes(bytes: &[u8]) -> i64 {
    let mut array = [0u8; 8];
    array.copy_from_slice(bytes);
    (u64::from_be_bytes(array) ^ (1 << 63)) as i64
}

fn prefix(key: &[u8]) -> Result<Vec<u8>, StoreError> {
    let len = u16::try_from(key.len()).map_err(|_| StoreError::KeyTooLong {
        len: key.len(),
        max: u16::MAX as usize,
    })?;
    let mut prefix = Vec::with_capacity(2 + key.len() + 8);
    prefix.extend_from_slice(&len.to_be_bytes());
    prefix.extend_from_slice(key);
    Ok(prefix)
}

fn decode_value(value: &[u8]) -> Option<Vec<u8>> {
    match value.split_first() {
        Some((1, rest)) => Some(rest.to_vec()),
        _ => None,
    }
}

impl<S: Store> VersionedStore<S> {
    pub fn new(store: S) -> Self {
        Self { store }
    }

    /// Records that `key` has `value` (`None`: deleted) from `valid_from_ms` on.
    pub fn put(
        &mut self,
        key: &[u8],
        valid_from_ms: i64,
        value: Option<&[u8]>,
    ) -> Result<(), StoreError> {
        let mut full = prefix(key)?;
        full.extend_from_slice(&time_bytes(valid_from_ms));
        let encoded = match value {
            Some(value) => [&[1u8][..], value].concat(),
            None => vec![0],
        };
        self.store.put(&full, &encoded);
        Ok(())
    }

    /// Every version of `key`, oldest first. All of them: reading only the first N would make
    /// `latest` answer an old version once a key has more (review M6).
    pub fn versions(&self, key: &[u8]) -> Result<Vec<Version>, StoreError> {
        let from = prefix(key)?;
        let mut to = from.clone();
        to.extend_from_slice(&[0xff; 9]);
        Ok(self
            .store
            .range(&from, &to, usize::MAX)?
            .into_iter()
            .map(|(full, value)| {
                (
                    time_from_bytes(&full[full.len() - 8..]),
                    decode_value(&value),
                )
            })
            .collect())
    }

    /// The current value of `key`: its latest version, `None` if it has none or was deleted.
    pub fn latest(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.versions(key)?.pop().and_then(|(_, value)| value))
    }

    /// The value `key` had at `time_ms`: the latest version valid from at or before then.
    pub fn as_of(&self, key: &[u8], time_ms: i64) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .versions(key)?
            .into_iter()
            .rev()
            .find(|(valid_from, _)| *valid_from <= time_ms)
            .and_then(|(_, value)| value))
    }

    /// Every key with at least one version, in key order. Scans the whole store: meant for
    /// loading a small table (the scripts) at start.
    pub fn keys(&self) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut keys: Vec<Vec<u8>> = Vec::new();
        // Above every possible full key: a 2-byte length, up to 65,535 key bytes and 8 time bytes.
        let end = vec![0xff; 2 + usize::from(u16::MAX) + 9];
        for (full, _) in self.store.range(&[], &end, usize::MAX)? {
            let len = usize::from(u16::from_be_bytes([full[0], full[1]]));
            let key = &full[2..2 + len];
            if keys.last().map(Vec::as_slice) != Some(key) {
                keys.push(key.to_vec());
            }
        }
        Ok(keys)
    }

    pub fn commit(&mut self) -> Result<Vec<ChangelogRecord>, StoreError> {
        self.store.commit()
    }

    pub fn restore(&mut self, record: &ChangelogRecord) -> Result<(), StoreError> {
        self.store.restore(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MemoryStore;

    #[test]
    fn latest_and_as_of_follow_versions_and_tombstones() {
        let mut table = VersionedStore::new(MemoryStore::default());
        table.put(b"music", 100, Some(b"v1")).unwrap();
        table.put(b"music", 200, Some(b"v2")).unwrap();
        table.put(b"music", 300, None).unwrap();
        table.put(b"music:1", 150, Some(b"other")).unwrap();
        table.commit().unwrap();

        assert_eq!(table.latest(b"music").unwrap(), None, "deleted last");
        assert_eq!(table.as_of(b"music", 99).unwrap(), None);
        assert_eq!(
            table.as_of(b"music", 100).unwrap().as_deref(),
            Some(&b"v1"[..])
        );
        assert_eq!(
            table.as_of(b"music", 250).unwrap().as_deref(),
            Some(&b"v2"[..])
        );
        assert_eq!(table.as_of(b"music", 300).unwrap(), None);
        assert_eq!(
            table.latest(b"music:1").unwrap().as_deref(),
            Some(&b"other"[..])
        );
        assert_eq!(
            table.versions(b"music").unwrap().len(),
            3,
            "keys do not bleed into each other"
        );
    }

    #[test]
    fn keys_lists_each_versioned_key_once() {
        let mut store = VersionedStore::new(MemoryStore::default());
        store.put(b"b", 1, Some(b"x")).unwrap();
        store.put(b"a", 1, Some(b"x")).unwrap();
        store.put(b"a", 2, None).unwrap();
        store.commit().unwrap();
        assert_eq!(store.keys().unwrap(), [b"a".to_vec(), b"b".to_vec()]);
    }

    #[test]
    fn an_oversized_key_is_an_error_not_a_panic() {
        let mut table = VersionedStore::new(MemoryStore::default());
        let key = vec![b'k'; 70_000];
        assert!(matches!(
            table.put(&key, 1, Some(b"v")),
            Err(StoreError::KeyTooLong { len: 70_000, .. })
        ));
        assert!(table.latest(&key).is_err());
    }

    #[test]
    fn time_bytes_sort_in_time_order() {
        let times = [i64::MIN, -5, 0, 7, i64::MAX];
        for pair in times.windows(2) {
            assert!(time_bytes(pair[0]) < time_bytes(pair[1]));
        }
        for time in times {
            assert_eq!(time_from_bytes(&time_bytes(time)), time);
        }
    }
}
