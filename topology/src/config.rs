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
