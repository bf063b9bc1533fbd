//! The `kafka` configuration section: where the brokers are, what the topics are called and how
//! they are laid out. Loaded by the binary (defaults → YAML → `HOWK_KAFKA_*` env, SPEC §8).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `kafka.*`: the broker connection and the topic layout shared by every stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap servers, `host:port` comma list. Default `127.0.0.1:9092`.
    pub brokers: String,
    /// Topic names (SPEC §2). Every name is configurable so instances can share a cluster.
    pub topics: TopicNames,
    /// Partitions of the co-partitioned webhook topics (pending, delivery, retry, results,
    /// deadletter) and of their changelogs, which must match their source. Default 6.
    pub partitions: i32,
    /// Partitions of `howk.scripts`. Every instance reads all of them (a global table), so one
    /// is plenty. Default 1.
    pub scripts_partitions: i32,
    /// Replication factor of created topics. Default 1 (a single local broker).
    pub replication_factor: i32,
    /// How long an admin or metadata request may wait for the broker before failing. Default 10s.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".to_owned(),
            topics: TopicNames::default(),
            partitions: 6,
            scripts_partitions: 1,
            replication_factor: 1,
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// `kafka.topics.*`: the name of each topic of SPEC §2.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopicNames {
    /// Webhooks in, keyed by config_id. Default `howk.pending`.
    pub pending: String,
    /// Scripts table, compacted, keyed by config_id. Default `howk.scripts`.
    pub scripts: String,
    /// Webhooks re-keyed by endpoint, and retries re-entering. Default `howk.delivery`.
    pub delivery: String,
    /// Scheduled retries, keyed by webhook_id. Default `howk.retry`.
    pub retry: String,
    /// One DeliveryResult per attempt and terminal event. Default `howk.results`.
    pub results: String,
    /// Terminal failures with a reason. Default `howk.deadletter`.
    pub deadletter: String,
    /// Replay jobs' progress, compacted, keyed by job id. Default `howk.replays`.
    pub replays: String,
    /// Prefix of store changelog topics: `<prefix><store>-changelog`. Default `howk-`.
    pub changelog_prefix: String,
}

impl Default for TopicNames {
    fn default() -> Self {
        Self {
            pending: "howk.pending".to_owned(),
            scripts: "howk.scripts".to_owned(),
            delivery: "howk.delivery".to_owned(),
            retry: "howk.retry".to_owned(),
            results: "howk.results".to_owned(),
            deadletter: "howk.deadletter".to_owned(),
            replays: "howk.replays".to_owned(),
            changelog_prefix: "howk-".to_owned(),
        }
    }
}

impl TopicNames {
    /// The changelog topic of a state store (`howk-idempotency-changelog`).
    pub fn changelog(&self, store: &str) -> String {
        format!("{}{store}-changelog", self.changelog_prefix)
    }
}

/// `processing.*`: how the stream thread runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProcessingConfig {
    /// Consumer group of the stages; instances with the same group share the partitions.
    /// Default `howk`.
    pub group: String,
    /// This instance's stable id (static group membership and transactional id): a restarted
    /// instance with the same id takes its partitions back at once. Default: the host name.
    pub instance_id: String,
    /// Where task stores and the scripts table live. Default `.data/howk`.
    pub data_dir: std::path::PathBuf,
    /// How often outputs, changelogs and offsets commit in one transaction. Default 100ms.
    #[serde(with = "humantime_serde")]
    pub commit_interval: Duration,
    /// On shutdown, how long in-flight deliveries may finish. Default 10s.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Largest `howk.pending` value taken; bigger ones are dead-lettered `invalid_record`.
    /// Default 1048576 (1 MiB).
    pub max_record_bytes: usize,
    /// Threads running Lua scripts. Default: the number of CPUs.
    pub script_threads: usize,
}

impl Default for ProcessingConfig {
    fn default() -> Self {
        Self {
            group: "howk".to_owned(),
            instance_id: String::new(),
            data_dir: ".data/howk".into(),
            commit_interval: Duration::from_millis(100),
            shutdown_grace: Duration::from_secs(10),
            max_record_bytes: 1024 * 1024,
            script_threads: 0,
        }
    }
}

impl ProcessingConfig {
    /// `instance_id`, or the host name when unset.
    pub fn instance_id(&self) -> String {
        if !self.instance_id.is_empty() {
            return self.instance_id.clone();
        }
        std::fs::read_to_string("/etc/hostname")
            .ok()
            .map(|name| name.trim().to_owned())
            .filter(|name| !name.is_empty())
            .unwrap_or_else(|| "howk-0".to_owned())
    }

    /// `script_threads`, or the number of CPUs when unset.
    pub fn script_threads(&self) -> usize {
        if self.script_threads > 0 {
            return self.script_threads;
        }
        std::thread::available_parallelism().map_or(2, |n| n.get())
    }
}

/// `scripts.*`: the scripts table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScriptsConfig {
    /// How long a webhook whose `script_hash` names a version the table has not seen waits for
    /// it before it is dead-lettered `script_not_found`. Default 10s.
    #[serde(with = "humantime_serde")]
    pub fence_timeout: Duration,
}

impl Default for ScriptsConfig {
    fn default() -> Self {
        Self {
            fence_timeout: Duration::from_secs(10),
        }
    }
}

/// `idempotency.*`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdempotencyConfig {
    /// How long an `idempotency_key` suppresses repeats. Default 24h.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
}

impl Default for IdempotencyConfig {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(24 * 3600),
        }
    }
}

/// `status.*`: what the status stage keeps for `GET /webhooks/:id/status` and `/stats`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StatusConfig {
    /// How long a webhook's status is kept after its first result (then 404). Default 7d.
    /// Minute buckets and endpoints seen are kept 25 h (the widest `/stats` window is 24 h).
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
}

impl Default for StatusConfig {
    fn default() -> Self {
        Self {
            retention: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// `dlq.*`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DlqConfig {
    /// Copy the first 1 KiB of the last response body into dead letters. Off by default: a
    /// receiver's error page may echo what it was sent. Default false.
    pub include_response_body: bool,
}

/// `replay.*`: replay jobs (`howk replay`, `/admin/replays`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReplayConfig {
    /// Most webhooks a re-drive enqueues per second, so live traffic keeps its share; 0:
    /// unpaced. Default 1000.
    pub max_rate: f64,
}

impl Default for ReplayConfig {
    fn default() -> Self {
        Self { max_rate: 1000.0 }
    }
}
