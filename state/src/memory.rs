//! An in-memory [`Store`], for fast tests of the logic built on stores.

use std::collections::BTreeMap;

use crate::store::{ChangelogRecord, Entry, Store, StoreError, merge_range};

#[derive(Debug, Default)]
pub struct MemoryStore {
    committed: BTreeMap<Vec<u8>, Vec<u8>>,
    pending: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl Store for MemoryStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(match self.pending.get(key) {
            Some(value) => value.clone(),
            None => self.committed.get(key).cloned(),
        })
    }

    fn put(&mut self, key: &[u8], value: &[u8]) {
        self.pending.insert(key.to_vec(), Some(value.to_vec()));
    }

    fn delete(&mut self, key: &[u8]) {
        self.pending.insert(key.to_vec(), None);
    }

    fn range(&self, from: &[u8], to: &[u8], limit: usize) -> Result<Vec<Entry>, StoreError> {
        let base = self
            .committed
            .range(from.to_vec()..to.to_vec())
            .take(limit + self.pending.len())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Ok(merge_range(base, &self.pending, from, to, limit))
    }

    fn commit(&mut self) -> Result<Vec<ChangelogRecord>, StoreError> {
        let pending = std::mem::take(&mut self.pending);
        let mut log = Vec::with_capacity(pending.len());
        for (key, value) in pending {
            match &value {
                Some(value) => self.committed.insert(key.clone(), value.clone()),
                None => self.committed.remove(&key),
            };
            log.push(ChangelogRecord { key, value });
        }
        Ok(log)
    }

    fn restore(&mut self, record: &ChangelogRecord) -> Result<(), StoreError> {
        match &record.value {
            Some(value) => self.committed.insert(record.key.clone(), value.clone()),
            None => self.committed.remove(&record.key),
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::contract;

    #[test]
    fn memory_store_meets_the_contract() {
        contract::buffered_writes_are_visible_and_committed_as_changelog(
            &mut MemoryStore::default(),
        );
        contract::range_merges_committed_and_buffered(&mut MemoryStore::default());
        contract::restore_applies_without_logging(&mut MemoryStore::default());
    }
}
