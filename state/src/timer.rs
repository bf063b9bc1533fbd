//! Durable timers: entries ordered by due time, so the retry task's punctuator reads what is due
//! with one range scan (ARCHITECTURE.md, "Durable timers instead of sleeping").
//!
//! Layout: key = `due (i64, sign-flipped BE) ‖ id`, value = the timer's payload.

use crate::store::{ChangelogRecord, Store, StoreError};
use crate::versioned::{time_bytes, time_from_bytes};

/// One scheduled timer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timer {
    pub due_ms: i64,
    pub id: Vec<u8>,
    pub payload: Vec<u8>,
}

pub struct TimerStore<S> {
    store: S,
}

fn key(due_ms: i64, id: &[u8]) -> Vec<u8> {
    [&time_bytes(due_ms)[..], id].concat()
}

impl<S: Store> TimerStore<S> {
    pub fn new(store: S) -> Self {
        Self { store }
    }

    /// The underlying store (to persist it before a checkpoint).
    pub fn store(&self) -> &S {
        &self.store
    }

    pub fn schedule(&mut self, due_ms: i64, id: &[u8], payload: &[u8]) {
        self.store.put(&key(due_ms, id), payload);
    }

    pub fn cancel(&mut self, due_ms: i64, id: &[u8]) {
        self.store.delete(&key(due_ms, id));
    }

    /// Up to `limit` timers due at or before `now_ms`, earliest first.
    pub fn due(&self, now_ms: i64, limit: usize) -> Result<Vec<Timer>, StoreError> {
        let to = time_bytes(now_ms.saturating_add(1));
        Ok(self
            .store
            .range(&[], &to, limit)?
            .into_iter()
            // A key shorter than its time prefix can only come from a corrupt changelog record;
            // it is skipped rather than trusted.
            .filter(|(key, _)| key.len() >= 8)
            .map(|(key, payload)| Timer {
                due_ms: time_from_bytes(&key[..8]),
                id: key[8..].to_vec(),
                payload,
            })
            .collect())
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
    fn due_timers_come_in_due_order_and_cancelled_ones_do_not() {
        let mut timers = TimerStore::new(MemoryStore::default());
        timers.schedule(300, b"wh_c", b"c");
        timers.schedule(100, b"wh_a", b"a");
        timers.schedule(200, b"wh_b", b"b");
        timers.schedule(900, b"wh_later", b"later");
        timers.cancel(200, b"wh_b");
        timers.commit().unwrap();

        let due = timers.due(300, 10).unwrap();
        let ids: Vec<&[u8]> = due.iter().map(|t| t.id.as_slice()).collect();
        assert_eq!(ids, [&b"wh_a"[..], &b"wh_c"[..]]);
        assert_eq!(due[0].due_ms, 100);
        assert_eq!(timers.due(300, 1).unwrap().len(), 1);
        assert!(timers.due(99, 10).unwrap().is_empty());
    }

    #[test]
    fn a_corrupt_short_key_is_skipped_not_a_panic() {
        let mut timers = TimerStore::new(MemoryStore::default());
        timers
            .restore(&ChangelogRecord {
                key: vec![0x01],
                value: Some(b"x".to_vec()),
            })
            .unwrap();
        timers.schedule(100, b"wh_a", b"a");
        timers.commit().unwrap();
        let due = timers.due(100, 10).unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].id, b"wh_a");
    }

    #[test]
    fn timers_survive_a_restore_from_their_changelog() {
        let mut timers = TimerStore::new(MemoryStore::default());
        timers.schedule(100, b"wh_a", b"a");
        let changelog = timers.commit().unwrap();

        let mut restored = TimerStore::new(MemoryStore::default());
        for record in &changelog {
            restored.restore(record).unwrap();
        }
        assert_eq!(restored.due(100, 10).unwrap(), timers.due(100, 10).unwrap());
    }
}
