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
//! Store layout: `s ‖ webhook_id` → status JSON; `m ‖ minute (BE)` → counters JSON;
//! `e ‖ endpoint_hash` → last seen (ms, BE).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};

use howk_processor::ids::endpoint_hash;
use howk_processor::record::{DeliveryResult, Outcome};
use howk_state::rocks::RocksStore;
use howk_state::store::{Store, StoreError};
use serde::{Deserialize, Serialize};

use super::StageSettings;
use crate::log::{ReaderFactory, Record, TopicPartition};
use crate::processor::{Context, Processor, TaskError};
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

type SharedStore = Arc<Mutex<RocksStore>>;

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
            if let Some(bytes) = store.lock().expect("status store lock").get(&key)? {
                return Ok(serde_json::from_slice(&bytes).ok());
            }
        }
        Ok(None)
    }

    /// The window of the last `minutes` minutes before `now_ms` (the current minute included).
    pub fn window(&self, now_ms: i64, minutes: i64) -> Result<Window, StoreError> {
        let since_minute = now_ms / MINUTE_MS - minutes + 1;
        let mut window = Window::default();
        for store in self.stores.read().expect("stores lock").values() {
            let store = store.lock().expect("status store lock");
            let from = [&b"m"[..], &since_minute.to_be_bytes()].concat();
            for (_, value) in store.range(&from, b"n", usize::MAX)? {
                if let Ok(counters) = serde_json::from_slice::<Counters>(&value) {
                    window.counters.add(&counters);
                }
            }
            for (key, value) in store.range(b"e", b"f", usize::MAX)? {
                let seen = <[u8; 8]>::try_from(value.as_slice()).map(i64::from_be_bytes);
                if seen.is_ok_and(|seen| seen / MINUTE_MS >= since_minute) {
                    window
                        .endpoints
                        .insert(String::from_utf8_lossy(&key[1..]).into_owned());
                }
            }
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
            .offset(&partition.topic, partition.partition)
            .filter(|_| opened.clean);
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
                        fold(&mut store, &value)?;
                    }
                    Ok(())
                },
            )?;
            store.commit()?;
        }
        let next_offset = committed.unwrap_or(from).max(from);
        tracing::info!(%partition, clean, from, replayed, "status task ready");
        let store = Arc::new(Mutex::new(store));
        stores.register(partition.partition, Arc::clone(&store));
        Ok(Self {
            partition,
            store,
            stores,
            checkpoint,
            next_offset,
        })
    }
}

/// Folds one result into the status and stats of `store` (buffered; the caller commits).
fn fold(store: &mut RocksStore, value: &[u8]) -> Result<(), StoreError> {
    let Ok(result) = serde_json::from_slice::<DeliveryResult>(value) else {
        return Ok(());
    };
    if result.outcome == Outcome::Duplicate {
        return Ok(());
    }
    let key = [b"s", result.webhook_id.as_bytes()].concat();
    let mut status = store
        .get(&key)?
        .and_then(|bytes| serde_json::from_slice::<WebhookStatus>(&bytes).ok())
        .unwrap_or_else(|| WebhookStatus {
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
        Outcome::Accepted => bucket.enqueued = 1,
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
    let endpoint_key = [&b"e"[..], endpoint_hash(&result.endpoint).as_bytes()].concat();
    store.put(&endpoint_key, &at_ms.to_be_bytes());
    Ok(())
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
        let mut store = self.store.lock().expect("status store lock");
        if let Some(value) = record.value {
            fold(&mut store, &value)?;
        }
        // The source topic is the changelog: nothing to log, just apply.
        store.commit()?;
        self.next_offset = record.offset + 1;
        Ok(())
    }

    fn close(&mut self) -> Result<(), TaskError> {
        let store = self.store.lock().expect("status store lock");
        write_source_checkpoint(&store, &self.checkpoint, &self.partition, self.next_offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::KafkaConfig;
    use crate::log::embedded::EmbeddedLog;
    use crate::log::{Log, OutRecord, TopicReader};
    use crate::stage::Topics;
    use crate::topics::catalogue;

    fn result(outcome: &str) -> Vec<u8> {
        format!(
            r#"{{"webhook_id":"wh_1","config_id":"shop","endpoint":"https://e.com/h","attempt":0,"outcome":"{outcome}","duration_ms":1,"timestamp":"2026-12-02T00:00:00Z"}}"#
        )
        .into_bytes()
    }

    #[test]
    fn a_kept_store_folds_what_another_owner_folded_meanwhile() {
        let dir = tempfile::tempdir().unwrap();
        let kafka = KafkaConfig {
            partitions: 1,
            ..KafkaConfig::default()
        };
        let log = Arc::new(EmbeddedLog::open(None, &catalogue(&kafka)).unwrap());
        let readers: ReaderFactory = {
            let log = Arc::clone(&log);
            Arc::new(move || {
                log.reader()
                    .map(|reader| Box::new(reader) as Box<dyn TopicReader>)
            })
        };
        let settings = StageSettings {
            topics: Arc::new(Topics::new(&kafka.topics)),
            data_dir: dir.path().to_path_buf(),
            max_record_bytes: 1024,
            default_max_attempts: 3,
            idempotency_ttl: std::time::Duration::from_secs(60),
        };
        let partition = TopicPartition::new(&kafka.topics.results, 0);
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
        status.close().unwrap();
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
}
