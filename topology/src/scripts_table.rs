//! The scripts table: `howk.scripts` materialized on every instance, like a Kafka Streams
//! GlobalKTable (ARCHITECTURE.md, "Stream–table join").
//!
//! A loader thread reads every partition of the topic into a versioned store (every version of
//! a script by the time it became valid, tombstones included, so a replay can join as of a
//! webhook's `created_at`) and keeps the latest version of each config_id in memory, compiled
//! once, for the deliver stage's per-record lookup. The table is **ready** once it has caught up
//! with the end of every partition seen at start: no webhook is transformed before that.
//!
//! Restart: the versioned store lives under the data dir with a checkpoint of the offsets it has
//! applied, so a restart reads only what came after. The checkpoint is written after the store
//! commit, so a crash between the two re-applies a few records, which is harmless (a version
//! is keyed by config_id and time).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use howk_processor::ids::{ConfigId, namespace};
use howk_processor::lua::Script;
use howk_processor::record::ScriptConfig;
use howk_state::checkpoint::Checkpoint;
use howk_state::memory::MemoryStore;
use howk_state::rocks::RocksStore;
use howk_state::store::{Store, StoreError};
use howk_state::versioned::VersionedStore;
use tokio::sync::{Notify, watch};

use crate::log::{Log, LogError, ReadEvent, TopicPartition, TopicReader};

/// The latest version of one config_id's script, ready to run.
#[derive(Debug)]
pub struct ScriptEntry {
    pub config: ScriptConfig,
    /// Compiled once per version by the engines (keyed by hash); shared by every execution.
    pub script: Script,
}

type Versions = VersionedStore<Box<dyn Store + Send + Sync>>;

/// The table; clones share it.
#[derive(Clone)]
pub struct ScriptsTable {
    inner: Arc<Inner>,
}

struct Inner {
    latest: RwLock<HashMap<String, Arc<ScriptEntry>>>,
    /// Every hash each config_id has had: a webhook's `script_hash` fence waits for its entry.
    hashes: RwLock<HashMap<String, HashSet<String>>>,
    /// The versions, and each config_id's latest `valid_from` (what `apply` orders by).
    versions: Mutex<(Versions, HashMap<String, i64>)>,
    /// Versions found by [`ScriptsTable::pinned`], by (config_id, hash): a replay pins many
    /// webhooks to one version, and a version never changes once stored.
    pinned: Mutex<HashMap<(String, String), Script>>,
    ready: watch::Sender<bool>,
    changed: Notify,
    stop: AtomicBool,
}

#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Log(#[from] LogError),
}

impl ScriptsTable {
    /// An empty in-memory table (tests, `howk dev` without a data dir).
    pub fn in_memory() -> Self {
        Self::with_store(Box::new(MemoryStore::default()))
    }

    /// A table over the versioned store at `dir`, loaded with what that store already holds.
    pub fn open(dir: &Path) -> Result<Self, TableError> {
        std::fs::create_dir_all(dir).map_err(|error| StoreError::Checkpoint {
            path: dir.display().to_string(),
            reason: error.to_string(),
        })?;
        let table = Self::with_store(Box::new(RocksStore::open(&dir.join("store"))?));
        table.load_latest()?;
        Ok(table)
    }

    fn with_store(store: Box<dyn Store + Send + Sync>) -> Self {
        Self {
            inner: Arc::new(Inner {
                latest: RwLock::default(),
                hashes: RwLock::default(),
                versions: Mutex::new((VersionedStore::new(store), HashMap::new())),
                pinned: Mutex::default(),
                ready: watch::Sender::new(false),
                changed: Notify::new(),
                stop: AtomicBool::new(false),
            }),
        }
    }

    fn load_latest(&self) -> Result<(), TableError> {
        let (versions, last_valid_from) = &mut *self.inner.versions.lock().expect("versions lock");
        for key in versions.keys()? {
            let Ok(config_id) = String::from_utf8(key.clone()) else {
                continue;
            };
            for (valid_from, value) in versions.versions(&key)? {
                self.remember(&config_id, value.as_deref());
                last_valid_from.insert(config_id.clone(), valid_from);
            }
        }
        Ok(())
    }

    /// Makes `value` (a ScriptConfig, or `None` for a deletion) the latest of `config_id`.
    fn remember(&self, config_id: &str, value: Option<&[u8]>) {
        let config = match value.map(ScriptConfig::decode) {
            None => None,
            Some(Ok(config)) => Some(config),
            // An invalid record is ignored, not taken as a deletion: dropping the script would
            // send the tenant's webhooks out raw, untransformed.
            Some(Err(error)) => {
                tracing::warn!(config_id, error = %error, "ignoring an invalid script record");
                return;
            }
        };
        let mut latest = self.inner.latest.write().expect("latest lock");
        match config {
            Some(config) => {
                self.inner
                    .hashes
                    .write()
                    .expect("hashes lock")
                    .entry(config_id.to_owned())
                    .or_default()
                    .insert(config.hash.clone());
                let script = Script::new(config.lua_code.as_str(), config.script_config.clone());
                latest.insert(
                    config_id.to_owned(),
                    Arc::new(ScriptEntry { config, script }),
                );
            }
            None => {
                latest.remove(config_id);
            }
        }
    }

    /// Applies one `howk.scripts` record (key = config_id, `None` value = delete).
    ///
    /// Live, the last record of a key wins; at a restart the versions are read back in time
    /// order. So that both agree whatever the producers' clocks say (review M6), a version is
    /// never stored as valid from before the key's latest one: a record stamped earlier than its
    /// predecessor in the log is taken as valid from 1 ms after it.
    pub fn apply(&self, config_id: &str, value: Option<&[u8]>, valid_from_ms: i64) {
        {
            let (versions, last_valid_from) =
                &mut *self.inner.versions.lock().expect("versions lock");
            let valid_from = match last_valid_from.get(config_id) {
                Some(&last) if last >= valid_from_ms => last.saturating_add(1),
                _ => valid_from_ms,
            };
            match versions.put(config_id.as_bytes(), valid_from, value) {
                Ok(()) => {
                    last_valid_from.insert(config_id.to_owned(), valid_from);
                }
                Err(error) => {
                    tracing::warn!(config_id, error = %error, "script version not stored");
                }
            }
        }
        self.remember(config_id, value);
        self.inner.changed.notify_waiters();
    }

    fn commit(&self) -> Result<(), StoreError> {
        self.inner
            .versions
            .lock()
            .expect("versions lock")
            .0
            .commit()
            .map(|_| ())
    }

    /// The script that runs for `config_id`: its own, else its namespace's (SPEC §1).
    pub fn lookup(&self, config_id: &ConfigId) -> Option<Arc<ScriptEntry>> {
        let latest = self.inner.latest.read().expect("latest lock");
        latest
            .get(config_id.as_str())
            .or_else(|| latest.get(namespace(config_id.as_str())))
            .cloned()
    }

    /// The script of `config_id` itself, without the namespace fallback (what the script API
    /// reads and replaces).
    pub fn current(&self, config_id: &ConfigId) -> Option<Arc<ScriptEntry>> {
        let latest = self.inner.latest.read().expect("latest lock");
        latest.get(config_id.as_str()).cloned()
    }

    /// Whether the table has seen version `hash` of the script that `config_id` uses.
    pub fn has_version(&self, config_id: &ConfigId, hash: &str) -> bool {
        let hashes = self.inner.hashes.read().expect("hashes lock");
        [config_id.as_str(), namespace(config_id.as_str())]
            .iter()
            .any(|id| hashes.get(*id).is_some_and(|set| set.contains(hash)))
    }

    /// Waits up to `timeout` for [`has_version`](Self::has_version); true when it holds.
    pub async fn wait_for_version(
        &self,
        config_id: &ConfigId,
        hash: &str,
        timeout: Duration,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let changed = self.inner.changed.notified();
            if self.has_version(config_id, hash) {
                return true;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return self.has_version(config_id, hash);
            }
        }
    }

    /// The script `config_id` had at `time_ms` (as-of join for replays).
    pub fn as_of(&self, config_id: &str, time_ms: i64) -> Result<Option<ScriptConfig>, StoreError> {
        let versions = self.inner.versions.lock().expect("versions lock");
        Ok(versions
            .0
            .as_of(config_id.as_bytes(), time_ms)?
            .and_then(|bytes| ScriptConfig::decode(&bytes).ok()))
    }

    /// The version `hash` of the script `config_id` runs (its own, else its namespace's), for
    /// a webhook pinned to it (replays).
    fn version(&self, config_id: &str, hash: &str) -> Result<Option<ScriptConfig>, StoreError> {
        let versions = self.inner.versions.lock().expect("versions lock");
        for id in [config_id, namespace(config_id)] {
            for (_, value) in versions.0.versions(id.as_bytes())? {
                if let Some(config) = value.and_then(|bytes| ScriptConfig::decode(&bytes).ok())
                    && config.hash == hash
                {
                    return Ok(Some(config));
                }
            }
        }
        Ok(None)
    }

    /// The script of version `hash` for `config_id` (see [`version`](Self::version)), ready to
    /// run; looked up in the store once per (config_id, hash).
    pub fn pinned(&self, config_id: &str, hash: &str) -> Result<Option<Script>, StoreError> {
        let key = (config_id.to_owned(), hash.to_owned());
        if let Some(script) = self.inner.pinned.lock().expect("pinned lock").get(&key) {
            return Ok(Some(script.clone()));
        }
        // A miss is not kept: the version may reach the table later.
        let Some(config) = self.version(config_id, hash)? else {
            return Ok(None);
        };
        let script = Script::new(config.lua_code.as_str(), config.script_config);
        self.inner
            .pinned
            .lock()
            .expect("pinned lock")
            .insert(key, script.clone());
        Ok(Some(script))
    }

    /// The script that ran for `config_id` at `time_ms` (its own then, else its namespace's):
    /// what an `as-of` replay pins.
    pub fn lookup_as_of(
        &self,
        config_id: &str,
        time_ms: i64,
    ) -> Result<Option<ScriptConfig>, StoreError> {
        match self.as_of(config_id, time_ms)? {
            Some(config) => Ok(Some(config)),
            None => self.as_of(namespace(config_id), time_ms),
        }
    }

    pub fn is_ready(&self) -> bool {
        *self.inner.ready.borrow()
    }

    /// Resolves once the table has caught up with the topic.
    pub async fn wait_ready(&self) {
        let mut ready = self.inner.ready.subscribe();
        let _ = ready.wait_for(|ready| *ready).await;
    }

    /// Blocking variant of [`wait_ready`](Self::wait_ready), for the stream thread; false after
    /// `timeout`.
    pub fn wait_ready_blocking(&self, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        while !self.is_ready() {
            if std::time::Instant::now() >= deadline || self.inner.stop.load(Ordering::Relaxed) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }

    /// Asks the loader to stop.
    pub fn stop(&self) {
        self.inner.stop.store(true, Ordering::Relaxed);
    }
}

/// Where the loader keeps its offsets; `None` reads the topic from the start each time.
pub struct LoaderConfig {
    pub topic: Arc<str>,
    pub checkpoint: Option<PathBuf>,
}

/// The loader's first wait after a failed save, doubled up to [`LOADER_BACKOFF_MAX`].
const LOADER_BACKOFF_START: Duration = Duration::from_millis(100);
const LOADER_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Starts the loader thread: reads every partition of the scripts topic from the checkpoint,
/// marks the table ready at the ends seen at start, and keeps applying new records until
/// [`ScriptsTable::stop`].
pub fn spawn_loader<L: Log>(
    log: Arc<L>,
    table: ScriptsTable,
    config: LoaderConfig,
) -> Result<std::thread::JoinHandle<Result<(), TableError>>, TableError> {
    let partitions = log.partitions(&config.topic)?;
    let mut checkpoint = match &config.checkpoint {
        Some(path) => Checkpoint::read(path)?,
        None => Checkpoint::default(),
    };
    let mut reader = log.reader()?;
    let assignment: Vec<(TopicPartition, i64)> = (0..partitions)
        .map(|p| {
            let tp = TopicPartition {
                topic: Arc::clone(&config.topic),
                partition: p,
            };
            let from = checkpoint.offset(&config.topic, p).unwrap_or(0);
            (tp, from)
        })
        .collect();
    reader.assign(&assignment)?;
    Ok(std::thread::Builder::new()
        .name("howk-scripts".into())
        .spawn(move || {
            let mut behind: HashSet<i32> = (0..partitions).collect();
            let mut dirty = false;
            let mut backoff = LOADER_BACKOFF_START;
            while !table.inner.stop.load(Ordering::Relaxed) {
                let polled = match reader.poll(Duration::from_millis(100)) {
                    Ok(polled) => polled,
                    Err(error) => {
                        // The broker may be restarting: the table keeps what it has and the
                        // reader resumes where it was.
                        tracing::warn!(error = %error, "scripts table read failed; retrying");
                        std::thread::sleep(Duration::from_millis(500));
                        continue;
                    }
                };
                match polled {
                    Some(ReadEvent::Record(record)) => {
                        let Some(key) = record.key.as_deref() else {
                            continue;
                        };
                        let config_id = String::from_utf8_lossy(key);
                        table.apply(&config_id, record.value.as_deref(), record.timestamp_ms);
                        checkpoint.set(&config.topic, record.partition, record.offset + 1);
                        dirty = true;
                    }
                    Some(ReadEvent::EndOfPartition(tp)) => {
                        behind.remove(&tp.partition);
                        if behind.is_empty() && !table.is_ready() && !dirty {
                            tracing::info!(topic = %config.topic, "scripts table caught up");
                            table.inner.ready.send_replace(true);
                        }
                    }
                    None => {}
                }
                if dirty {
                    let saved = table.commit().and_then(|()| match &config.checkpoint {
                        Some(path) => checkpoint.write(path),
                        None => Ok(()),
                    });
                    match saved {
                        Ok(()) => {
                            dirty = false;
                            backoff = LOADER_BACKOFF_START;
                            if behind.is_empty() && !table.is_ready() {
                                tracing::info!("scripts table saved again; ready");
                                table.inner.ready.send_replace(true);
                            }
                        }
                        Err(error) => {
                            // Not fatal and not silent: /ready turns red while the table cannot
                            // keep what it reads, and the save is retried with backoff (the
                            // versions stay applied in memory meanwhile).
                            tracing::error!(error = %error,
                                "scripts table cannot save its store or checkpoint; not ready, retrying");
                            table.inner.ready.send_replace(false);
                            std::thread::sleep(backoff);
                            backoff = (backoff * 2).min(LOADER_BACKOFF_MAX);
                        }
                    }
                }
            }
            Ok(())
        })
        .expect("spawn the scripts loader"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script(config_id: &str, code: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({"config_id": config_id, "lua_code": code})).unwrap()
    }

    #[test]
    fn lookup_falls_back_to_the_namespace_and_deletes_remove() {
        let table = ScriptsTable::in_memory();
        table.apply("wh", Some(&script("wh", "x = 1")), 1);
        let found = table.lookup(&ConfigId::new("wh:42:6")).unwrap();
        assert_eq!(found.config.config_id, "wh");
        table.apply("wh:42:6", Some(&script("wh:42:6", "x = 2")), 2);
        assert_eq!(
            table
                .lookup(&ConfigId::new("wh:42:6"))
                .unwrap()
                .config
                .lua_code,
            "x = 2"
        );
        table.apply("wh:42:6", None, 3);
        assert_eq!(
            table
                .lookup(&ConfigId::new("wh:42:6"))
                .unwrap()
                .config
                .config_id,
            "wh"
        );
        assert_eq!(
            table.as_of("wh:42:6", 2).unwrap().unwrap().lua_code,
            "x = 2"
        );
        assert!(table.as_of("wh:42:6", 3).unwrap().is_none());
    }

    #[test]
    fn an_invalid_script_record_keeps_the_current_script() {
        let table = ScriptsTable::in_memory();
        table.apply("shop", Some(&script("shop", "x = 1")), 1);
        table.apply("shop", Some(b"not a script"), 2);
        let current = table.lookup(&ConfigId::new("shop")).unwrap();
        assert_eq!(current.config.lua_code, "x = 1");
    }

    #[tokio::test]
    async fn a_fence_waits_for_its_version() {
        let table = ScriptsTable::in_memory();
        let hash = howk_processor::lua::script::script_hash("x = 1");
        let id = ConfigId::new("a");
        assert!(
            !table
                .wait_for_version(&id, &hash, Duration::from_millis(20))
                .await
        );
        let writer = table.clone();
        let waiter = tokio::spawn({
            let (table, id, hash) = (table.clone(), id.clone(), hash.clone());
            async move {
                table
                    .wait_for_version(&id, &hash, Duration::from_secs(5))
                    .await
            }
        });
        tokio::task::yield_now().await;
        writer.apply("a", Some(&script("a", "x = 1")), 1);
        assert!(waiter.await.unwrap());
    }

    #[test]
    fn after_a_reopen_the_latest_is_the_last_record_whatever_its_timestamp() {
        let dir = tempfile::tempdir().unwrap();
        {
            let table = ScriptsTable::open(dir.path()).unwrap();
            // A PUT, then a DELETE stamped earlier by a producer with a slower clock.
            table.apply("skew", Some(&script("skew", "x = 1")), 1_000);
            table.apply("skew", None, 900);
            assert!(table.lookup(&ConfigId::new("skew")).is_none());
            table.commit().unwrap();
        }
        let reopened = ScriptsTable::open(dir.path()).unwrap();
        assert!(
            reopened.lookup(&ConfigId::new("skew")).is_none(),
            "a deleted script came back after the restart"
        );
    }

    #[test]
    fn after_a_reopen_the_latest_of_many_versions_wins() {
        let dir = tempfile::tempdir().unwrap();
        let count = 10_001;
        {
            let table = ScriptsTable::open(dir.path()).unwrap();
            for n in 0..count {
                table.apply("busy", Some(&script("busy", &format!("x = {n}"))), n);
            }
            table.commit().unwrap();
        }
        let reopened = ScriptsTable::open(dir.path()).unwrap();
        assert_eq!(
            reopened
                .lookup(&ConfigId::new("busy"))
                .unwrap()
                .config
                .lua_code,
            format!("x = {}", count - 1)
        );
    }

    #[test]
    fn a_loader_that_cannot_save_turns_not_ready_and_recovers() {
        use crate::log::embedded::EmbeddedLog;
        use crate::log::{Log, OutRecord};
        use crate::topics::TopicSpec;

        let dir = tempfile::tempdir().unwrap();
        let saved = dir.path().join("saved");
        std::fs::create_dir_all(&saved).unwrap();
        let topic: Arc<str> = Arc::from("scripts");
        let log = Arc::new(
            EmbeddedLog::open(
                None,
                &[TopicSpec {
                    name: topic.to_string(),
                    partitions: 1,
                    compacted: true,
                }],
            )
            .unwrap(),
        );
        let put = |code: &str| {
            log.produce(vec![OutRecord {
                topic: Arc::clone(&topic),
                partition: None,
                key: b"shop".to_vec(),
                value: Some(script("shop", code)),
            }])
            .unwrap();
        };
        let table = ScriptsTable::in_memory();
        let loader = spawn_loader(
            Arc::clone(&log),
            table.clone(),
            LoaderConfig {
                topic: Arc::clone(&topic),
                checkpoint: Some(saved.join("checkpoint")),
            },
        )
        .unwrap();
        let wait = |what: &str, condition: &dyn Fn() -> bool| {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while !condition() {
                assert!(std::time::Instant::now() < deadline, "never {what}");
                std::thread::sleep(Duration::from_millis(10));
            }
        };
        put("x = 1");
        wait("ready", &|| {
            table.is_ready() && table.lookup(&ConfigId::new("shop")).is_some()
        });

        // The checkpoint's folder goes away: the save fails, the table is not ready, the
        // thread lives on.
        std::fs::remove_dir_all(&saved).unwrap();
        put("x = 2");
        wait("not ready", &|| !table.is_ready());
        assert!(!loader.is_finished());
        std::fs::create_dir_all(&saved).unwrap();
        wait("ready again", &|| table.is_ready());
        assert_eq!(
            table
                .lookup(&ConfigId::new("shop"))
                .unwrap()
                .config
                .lua_code,
            "x = 2"
        );
        table.stop();
        loader.join().unwrap().unwrap();
    }
}
