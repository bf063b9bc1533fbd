//! Status (`howk.results`, keyed by webhook_id): folds every result into the webhook's status
//! (SPEC §3: `pending`, `delivered`, `failed` = retry scheduled, `exhausted` = dead-lettered)
//! and into per-minute stats buckets, so `last_1h` and `last_24h` are exact windows of 60 and
//! 1,440 buckets. The stores are queryable in place (interactive queries) through
//! [`StatusStores`].
//!
//! The source topic doubles as the changelog: a store that did not close cleanly is wiped and
//! rebuilt by replaying `howk.results` up to the group's committed offset, after which the task
//! continues from that offset — each result is folded exactly once.
//!
//! Store layout: `s ‖ webhook_id` → status JSON; `t ‖ first seen (ms, BE) ‖ webhook_id` → ``
//! (the retention index); `m ‖ minute (BE)` → counters JSON; `e ‖ endpoint_hash` → last seen
//! (ms, BE).
//!
//! Bounded (review M4): statuses are kept `status.retention` (7 days) after their first result,
//! minute buckets and endpoints 25 hours; a punctuation purges the rest in batches that keep up.
//! `/stats` never scans the store under the lock the stream thread folds with: the counters are
//! per-minute buckets (at most 1,440 reads), and the endpoints seen are an in-memory map beside
//! the store, behind a lock of their own.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};

use howk_processor::ids::endpoint_hash;
use howk_processor::record::{DeliveryResult, Outcome};
use howk_state::rocks::RocksStore;
use howk_state::store::{Store, StoreError};
use serde::{Deserialize, Serialize};

use super::StageSettings;
use crate::log::{ReaderFactory, Record, TopicPartition};
use crate::processor::{ChangelogEnds, Context, Processor, TaskError};
use crate::restore::{open_store, replay, write_source_checkpoint};

/// One webhook's status, as `GET /webhooks/:id/status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookStatus {
    pub webhook_id: String,
    /// The config_id of the first result for this id. A caller may choose a webhook's `id`, so
    /// results of another config_id with the same id are not folded into this status: one
    /// tenant cannot overwrite another's. (None only in statuses stored before this field.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_id: Option<String>,
    pub state: String,
    pub attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_attempt_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_status_code: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_retry_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivered_at: Option<String>,
}

/// Counters of one window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub enqueued: u64,
    pub delivered: u64,
    pub failed: u64,
    pub exhausted: u64,
}

impl Counters {
    fn add(&mut self, other: &Counters) {
        self.enqueued += other.enqueued;
        self.delivered += other.delivered;
        self.failed += other.failed;
        self.exhausted += other.exhausted;
    }
}

/// A window's counters and the endpoints seen in it (merged across partitions by the caller).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Window {
    pub counters: Counters,
    pub endpoints: HashSet<String>,
}

const MINUTE_MS: i64 = 60_000;
/// Minute buckets and endpoints seen are kept this long: the widest `/stats` window (24 h) and
/// an hour of margin.
const STATS_KEPT_MS: i64 = 25 * 3600 * 1000;
/// How often the retention purge runs, and how many keys one purge deletes at most (a full
/// batch purges on at the next punctuation).
const PURGE_INTERVAL_MS: i64 = 60_000;
const PURGE_BATCH: usize = 10_000;

/// One status task's store and its endpoints-seen view.
struct PartitionStatus {
    store: Mutex<RocksStore>,
    /// `endpoint_hash` → last seen (ms): what `e` keys hold, for `/stats` without the store.
    endpoints: RwLock<HashMap<String, i64>>,
}

type SharedStore = Arc<PartitionStatus>;

/// The status stores of this instance's status tasks, for queries.
#[derive(Clone, Default)]
pub struct StatusStores {
    stores: Arc<RwLock<HashMap<i32, SharedStore>>>,
}

impl StatusStores {
    fn register(&self, partition: i32, store: SharedStore) {
        self.stores
            .write()
            .expect("stores lock")
            .insert(partition, store);
    }

    /// Removes `store` if it is still the one registered for `partition`.
    fn unregister(&self, partition: i32, store: &SharedStore) {
        let mut stores = self.stores.write().expect("stores lock");
        if stores
            .get(&partition)
            .is_some_and(|registered| Arc::ptr_eq(registered, store))
        {
            stores.remove(&partition);
        }
    }

    /// How many partitions this instance serves.
    pub fn partitions(&self) -> usize {
        self.stores.read().expect("stores lock").len()
    }

    /// The status of `webhook_id`, from whichever local partition has it.
    pub fn status(&self, webhook_id: &str) -> Result<Option<WebhookStatus>, StoreError> {
        let key = [b"s", webhook_id.as_bytes()].concat();
        for store in self.stores.read().expect("stores lock").values() {
            if let Some(bytes) = store.store.lock().expect("status store lock").get(&key)? {
                return Ok(serde_json::from_slice(&bytes).ok());
            }
        }
        Ok(None)
    }

    /// The window of the last `minutes` minutes before `now_ms` (the current minute included).
    pub fn window(&self, now_ms: i64, minutes: i64) -> Result<Window, StoreError> {
        let since_minute = now_ms / MINUTE_MS - minutes + 1;
        let mut window = Window::default();
        let from = [&b"m"[..], &since_minute.to_be_bytes()].concat();
        for partition in self.stores.read().expect("stores lock").values() {
            // At most `minutes` bucket keys: a short read under the store's lock.
            let buckets = partition.store.lock().expect("status store lock").range(
                &from,
                b"n",
                minutes.max(0) as usize + 1,
            )?;
            for (_, value) in buckets {
                if let Ok(counters) = serde_json::from_slice::<Counters>(&value) {
                    window.counters.add(&counters);
                }
            }
            let endpoints = partition.endpoints.read().expect("endpoints lock");
            window.endpoints.extend(
                endpoints
                    .iter()
                    .filter(|(_, seen)| **seen / MINUTE_MS >= since_minute)
                    .map(|(hash, _)| hash.clone()),
            );
        }
        Ok(window)
    }
}

pub struct StatusProcessor {
    partition: TopicPartition,
    store: SharedStore,
    stores: StatusStores,
    checkpoint: std::path::PathBuf,
    /// The offset after the last result folded into the store.
    next_offset: i64,
    retention_ms: i64,
    next_purge_ms: i64,
}

impl StatusProcessor {
    pub fn open(
        settings: StageSettings,
        partition: TopicPartition,
        committed: Option<i64>,
        stores: StatusStores,
        readers: ReaderFactory,
    ) -> Result<Self, TaskError> {
        let dir = settings.store_dir("status", partition.partition);
        let opened = open_store(&dir, None, readers()?.as_mut())?;
        let checkpoint = opened.checkpoint_path();
        // A kept store holds the results up to its checkpointed offset; while this instance did
        // not own the partition another may have folded more (review M1), so the gap up to the
        // group's committed offset is folded now. A store without that offset is rebuilt.
        let kept_until = opened
            .checkpointed
            .offset(&partition.topic, partition.partition);
        let clean = kept_until.is_some();
        let mut store = opened.store;
        if opened.clean && !clean {
            // Opening deleted the checkpoint, so this open wipes the store.
            drop(store);
            store = open_store(&dir, None, readers()?.as_mut())?.store;
        }
        let from = kept_until.unwrap_or(0);
        let mut replayed = 0;
        if let Some(until) = committed {
            replayed = replay(
                readers()?.as_mut(),
                &partition,
                from,
                Some(until),
                |record| {
                    if let Some(value) = record.value {
                        fold(&mut store, None, &value)?;
                    }
                    Ok(())
                },
            )?;
            store.commit()?;
        }
        let next_offset = committed.unwrap_or(from).max(from);
        tracing::info!(%partition, clean, from, replayed, "status task ready");
        let mut endpoints = HashMap::new();
        for (key, value) in store.range(b"e", b"f", usize::MAX)? {
            if let Ok(seen) = <[u8; 8]>::try_from(value.as_slice()) {
                endpoints.insert(
                    String::from_utf8_lossy(&key[1..]).into_owned(),
                    i64::from_be_bytes(seen),
                );
            }
        }
        let store = Arc::new(PartitionStatus {
            store: Mutex::new(store),
            endpoints: RwLock::new(endpoints),
        });
        stores.register(partition.partition, Arc::clone(&store));
        Ok(Self {
            partition,
            store,
            stores,
            checkpoint,
            next_offset,
            retention_ms: i64::try_from(settings.status_retention.as_millis()).unwrap_or(i64::MAX),
            next_purge_ms: 0,
        })
    }
}

/// `t ‖ first seen (ms) ‖ webhook_id`: the retention index of a status.
fn retention_key(first_seen_ms: i64, webhook_id: &[u8]) -> Vec<u8> {
    [&b"t"[..], &first_seen_ms.to_be_bytes(), webhook_id].concat()
}

/// Folds one result into the status and stats of `store` (buffered; the caller commits), and
/// into `endpoints` when the view exists yet (it is built from the store after a replay).
fn fold(
    store: &mut RocksStore,
    endpoints: Option<&RwLock<HashMap<String, i64>>>,
    value: &[u8],
) -> Result<(), StoreError> {
    let Ok(result) = serde_json::from_slice::<DeliveryResult>(value) else {
        return Ok(());
    };
    if result.outcome == Outcome::Duplicate {
        return Ok(());
    }
    let key = [b"s", result.webhook_id.as_bytes()].concat();
    let stored = store
        .get(&key)?
        .and_then(|bytes| serde_json::from_slice::<WebhookStatus>(&bytes).ok());
    if stored.is_none() {
        // First result of this webhook: it expires `status.retention` from now.
        let first_seen = chrono::DateTime::parse_from_rfc3339(&result.timestamp)
            .map(|t| t.timestamp_millis())
            .unwrap_or_else(|_| chrono::Utc::now().timestamp_millis());
        store.put(
            &retention_key(first_seen, result.webhook_id.as_bytes()),
            b"",
        );
    }
    let mut status = stored.unwrap_or_else(|| WebhookStatus {
        webhook_id: result.webhook_id.clone(),
        config_id: Some(result.config_id.clone()),
        state: "pending".into(),
        attempts: 0,
        last_attempt_at: None,
        last_status_code: None,
        last_error: None,
        next_retry_at: None,
        delivered_at: None,
    });
    let owner = status
        .config_id
        .get_or_insert_with(|| result.config_id.clone());
    let spoofed = *owner != result.config_id;
    if spoofed {
        tracing::warn!(
            webhook_id = %result.webhook_id,
            "a result of another config_id reuses this webhook id; its status is not changed"
        );
    }
    let mut bucket = Counters::default();
    let attempt_made = |status: &mut WebhookStatus| {
        status.attempts = status.attempts.max(result.attempt + 1);
        status.last_attempt_at = Some(result.timestamp.clone());
        status.last_status_code = result.status_code;
        status.last_error = result.error.clone();
        status.next_retry_at = None;
    };
    match result.outcome {
        Outcome::Accepted => {
            bucket.enqueued = 1;
            // Accepted after its dead letter: a re-drive started it again.
            if status.state == "exhausted" {
                status.state = "pending".into();
            }
        }
        Outcome::Delivered => {
            attempt_made(&mut status);
            status.state = "delivered".into();
            status.delivered_at = Some(result.timestamp.clone());
            bucket.delivered = 1;
        }
        Outcome::RetryScheduled => {
            attempt_made(&mut status);
            status.state = "failed".into();
            status.next_retry_at = result.next_retry_at.clone();
            bucket.failed = 1;
        }
        Outcome::DeadLettered => {
            attempt_made(&mut status);
            status.state = "exhausted".into();
            bucket.exhausted = 1;
        }
        Outcome::CircuitOpen => status.next_retry_at = result.next_retry_at.clone(),
        Outcome::Duplicate => {}
    }
    if !spoofed {
        store.put(
            &key,
            &serde_json::to_vec(&status).expect("status serializes"),
        );
    }

    let at_ms = chrono::DateTime::parse_from_rfc3339(&result.timestamp)
        .map(|t| t.timestamp_millis())
        .unwrap_or_else(|_| chrono::Utc::now().timestamp_millis());
    if bucket != Counters::default() {
        let minute_key = [&b"m"[..], &(at_ms / MINUTE_MS).to_be_bytes()].concat();
        let mut counters = store
            .get(&minute_key)?
            .and_then(|bytes| serde_json::from_slice::<Counters>(&bytes).ok())
            .unwrap_or_default();
        counters.add(&bucket);
        store.put(
            &minute_key,
            &serde_json::to_vec(&counters).expect("counters serialize"),
        );
    }
    let hash = endpoint_hash(&result.endpoint);
    let endpoint_key = [&b"e"[..], hash.as_bytes()].concat();
    store.put(&endpoint_key, &at_ms.to_be_bytes());
    if let Some(endpoints) = endpoints {
        endpoints
            .write()
            .expect("endpoints lock")
            .insert(hash.to_string(), at_ms);
    }
    Ok(())
}

impl StatusProcessor {
    /// Deletes statuses past `status.retention` and buckets and endpoints past 25 h, at most
    /// [`PURGE_BATCH`] of each; true when a batch was full (more are due).
    fn purge(&mut self, now_ms: i64) -> Result<bool, StoreError> {
        let partition = &self.store;
        let mut store = partition.store.lock().expect("status store lock");
        let mut full = false;

        let until = retention_key(now_ms.saturating_sub(self.retention_ms), b"");
        let expired = store.range(b"t", &until, PURGE_BATCH)?;
        full |= expired.len() == PURGE_BATCH;
        for (index, _) in expired {
            store.delete(&[&b"s"[..], &index[9..]].concat());
            store.delete(&index);
        }

        let oldest_minute = (now_ms - STATS_KEPT_MS) / MINUTE_MS;
        let until = [&b"m"[..], &oldest_minute.to_be_bytes()].concat();
        let buckets = store.range(b"m", &until, PURGE_BATCH)?;
        full |= buckets.len() == PURGE_BATCH;
        for (key, _) in buckets {
            store.delete(&key);
        }

        let stale: Vec<String> = partition
            .endpoints
            .read()
            .expect("endpoints lock")
            .iter()
            .filter(|(_, seen)| **seen < now_ms - STATS_KEPT_MS)
            .take(PURGE_BATCH)
            .map(|(hash, _)| hash.clone())
            .collect();
        full |= stale.len() == PURGE_BATCH;
        if !stale.is_empty() {
            let mut endpoints = partition.endpoints.write().expect("endpoints lock");
            for hash in stale {
                store.delete(&[&b"e"[..], hash.as_bytes()].concat());
                endpoints.remove(&hash);
            }
        }
        store.commit()?;
        Ok(full)
    }
}

/// However the task ends (closed, lost, or its thread failed), the registry lets go of the
/// store, so the RocksDB lock is released for the next owner in this process.
impl Drop for StatusProcessor {
    fn drop(&mut self) {
        self.stores
            .unregister(self.partition.partition, &self.store);
    }
}

impl Processor for StatusProcessor {
    fn process(&mut self, record: Record, _ctx: &mut Context<'_>) -> Result<(), TaskError> {
        let mut store = self.store.store.lock().expect("status store lock");
        if let Some(value) = record.value {
            fold(&mut store, Some(&self.store.endpoints), &value)?;
        }
        // The source topic is the changelog: nothing to log, just apply.
        store.commit()?;
        self.next_offset = record.offset + 1;
        Ok(())
    }

    fn punctuate(&mut self, ctx: &mut Context<'_>) -> Result<(), TaskError> {
        if ctx.now_ms < self.next_purge_ms {
            return Ok(());
        }
        let full = self.purge(ctx.now_ms)?;
        self.next_purge_ms = if full {
            ctx.now_ms
        } else {
            ctx.now_ms + PURGE_INTERVAL_MS
        };
        Ok(())
    }

    fn close(&mut self, _: &ChangelogEnds) -> Result<(), TaskError> {
        // Its source is its changelog, and the offset it folded up to is its own.
        let store = self.store.store.lock().expect("status store lock");
        write_source_checkpoint(&store, &self.checkpoint, &self.partition, self.next_offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::embedded::EmbeddedLog;
    use crate::log::{Log, OutRecord};

    fn result(outcome: &str) -> Vec<u8> {
        format!(
            r#"{{"webhook_id":"wh_1","config_id":"shop","endpoint":"https://e.com/h","attempt":0,"outcome":"{outcome}","duration_ms":1,"timestamp":"2026-12-02T00:00:00Z"}}"#
        )
        .into_bytes()
    }

    /// An embedded log with the results topic (one partition), readers on it, and settings.
    fn fixture(
        dir: &std::path::Path,
    ) -> (
        Arc<EmbeddedLog>,
        ReaderFactory,
        StageSettings,
        TopicPartition,
    ) {
        let (log, readers, kafka) = crate::stage::fixture::log();
        let settings = crate::stage::fixture::settings(dir, &kafka);
        let partition = TopicPartition::new(&kafka.topics.results, 0);
        (log, readers, settings, partition)
    }

    #[test]
    fn a_kept_store_folds_what_another_owner_folded_meanwhile() {
        let dir = tempfile::tempdir().unwrap();
        let (log, readers, settings, partition) = fixture(dir.path());
        let produce = |value: Vec<u8>| {
            log.produce(vec![OutRecord {
                topic: Arc::clone(&partition.topic),
                partition: Some(0),
                key: b"wh_1".to_vec(),
                value: Some(value),
            }])
            .unwrap();
        };
        let record = |offset: i64, value: Vec<u8>| Record {
            topic: Arc::clone(&partition.topic),
            partition: 0,
            offset,
            key: None,
            value: Some(value.into()),
            timestamp_ms: 0,
        };
        let stores = StatusStores::default();

        // This instance folds the first result and closes cleanly (the partition moves away).
        produce(result("accepted"));
        let mut status = StatusProcessor::open(
            settings.clone(),
            partition.clone(),
            None,
            stores.clone(),
            Arc::clone(&readers),
        )
        .unwrap();
        let mut outputs = Vec::new();
        status
            .process(
                record(0, result("accepted")),
                &mut Context::new(0, &mut outputs),
            )
            .unwrap();
        status.close(&ChangelogEnds::ReadNow).unwrap();
        drop(status);

        // Another owner folds the delivery and commits past it; the partition comes back.
        produce(result("delivered"));
        let _status = StatusProcessor::open(
            settings,
            partition.clone(),
            Some(2),
            stores.clone(),
            readers,
        )
        .unwrap();
        assert_eq!(stores.status("wh_1").unwrap().unwrap().state, "delivered");
    }

    #[test]
    fn statuses_buckets_and_endpoints_past_their_retention_are_purged() {
        let dir = tempfile::tempdir().unwrap();
        let (_log, readers, settings, partition) = fixture(dir.path());
        let stores = StatusStores::default();
        let mut status =
            StatusProcessor::open(settings, partition.clone(), None, stores.clone(), readers)
                .unwrap();
        let now = chrono::Utc::now().timestamp_millis();
        let day = 24 * 3600 * 1000;
        let fold_at = |status: &mut StatusProcessor,
                       offset: i64,
                       id: &str,
                       endpoint: &str,
                       at: i64| {
            let timestamp = howk_processor::delivery::decide::rfc3339(at);
            let value = format!(
                r#"{{"webhook_id":"{id}","config_id":"shop","endpoint":"{endpoint}","attempt":0,"outcome":"accepted","duration_ms":1,"timestamp":"{timestamp}"}}"#
            );
            let record = Record {
                topic: Arc::clone(&partition.topic),
                partition: 0,
                offset,
                key: None,
                value: Some(value.into_bytes().into()),
                timestamp_ms: at,
            };
            status
                .process(record, &mut Context::new(now, &mut Vec::new()))
                .unwrap();
        };
        fold_at(
            &mut status,
            0,
            "wh_old",
            "https://old.example/h",
            now - 8 * day,
        );
        fold_at(
            &mut status,
            1,
            "wh_mid",
            "https://mid.example/h",
            now - 2 * day,
        );
        fold_at(
            &mut status,
            2,
            "wh_new",
            "https://new.example/h",
            now - 3600 * 1000,
        );
        let nine_days = 9 * 24 * 60;
        assert_eq!(stores.window(now, nine_days).unwrap().counters.enqueued, 3);
        assert_eq!(stores.window(now, nine_days).unwrap().endpoints.len(), 3);

        status
            .punctuate(&mut Context::new(now, &mut Vec::new()))
            .unwrap();
        assert!(stores.status("wh_old").unwrap().is_none(), "past 7 days");
        assert!(stores.status("wh_mid").unwrap().is_some());
        assert!(stores.status("wh_new").unwrap().is_some());
        // Buckets and endpoints are kept 25 hours.
        let window = stores.window(now, nine_days).unwrap();
        assert_eq!(window.counters.enqueued, 1);
        assert_eq!(window.endpoints.len(), 1);
    }
}
