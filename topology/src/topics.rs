//! The topics of SPEC §2 and `howk topics create`.
//!
//! Co-partitioned topics (pending → idempotency changelog, delivery → circuit changelog, retry →
//! timer changelog, results) share `kafka.partitions`, because a task owns one partition of a
//! source topic together with the same partition of its changelog. `howk.scripts`,
//! `howk.replays` (one partition each) and every changelog are compacted: only the latest value
//! per key matters.

use std::sync::Arc;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

use crate::config::KafkaConfig;
use crate::log::MAX_MESSAGE_BYTES;
use crate::log::kafka::{KafkaClientError, check_reachable, client_config};

/// State stores that keep a changelog topic (the status store's changelog is `howk.results`).
pub const CHANGELOG_STORES: [&str; 3] = ["idempotency", "circuit", "timers"];

/// `max.message.bytes` of every howk topic: the producers' record budget
/// ([`MAX_MESSAGE_BYTES`]) plus room for a record batch's own fields. Oversize webhooks reach
/// the ingest stage, which dead-letters them with a reason; derived records always fit.
pub fn topic_max_message_bytes() -> String {
    (MAX_MESSAGE_BYTES + 64 * 1024).to_string()
}

/// One topic howk needs: its name, layout and whether it is compacted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    pub compacted: bool,
}

/// Every topic of SPEC §2 under the configured names.
pub fn catalogue(config: &KafkaConfig) -> Vec<TopicSpec> {
    let names = &config.topics;
    let webhook = |name: &str| TopicSpec {
        name: name.to_owned(),
        partitions: config.partitions,
        compacted: false,
    };
    let mut topics = vec![
        webhook(&names.pending),
        TopicSpec {
            name: names.scripts.clone(),
            partitions: config.scripts_partitions,
            compacted: true,
        },
        webhook(&names.delivery),
        webhook(&names.retry),
        webhook(&names.results),
        webhook(&names.deadletter),
        TopicSpec {
            name: names.replays.clone(),
            partitions: 1,
            compacted: true,
        },
    ];
    topics.extend(CHANGELOG_STORES.iter().map(|store| TopicSpec {
        name: names.changelog(store),
        partitions: config.partitions,
        compacted: true,
    }));
    topics
}

/// What happened to one topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicOutcome {
    Created,
    AlreadyExisted,
}

#[derive(Debug, thiserror::Error)]
pub enum TopicsError {
    #[error(transparent)]
    Client(#[from] KafkaClientError),
    #[error("creating topics on {brokers} failed")]
    Request {
        brokers: String,
        #[source]
        source: KafkaError,
    },
    #[error("creating topic {topic} failed: {code}")]
    Topic {
        topic: String,
        code: RDKafkaErrorCode,
    },
    #[error("the blocking metadata check panicked or was cancelled")]
    Join(#[from] tokio::task::JoinError),
}

/// Creates every topic of the catalogue; topics that already exist are left as they are, so
/// running it again is harmless.
pub async fn create_topics(
    config: &KafkaConfig,
) -> Result<Vec<(TopicSpec, TopicOutcome)>, TopicsError> {
    let admin: AdminClient<DefaultClientContext> =
        client_config(config)
            .create()
            .map_err(|source| KafkaClientError::Create {
                brokers: config.brokers.clone(),
                source,
            })?;
    let admin = Arc::new(admin);
    {
        let (admin, config) = (Arc::clone(&admin), config.clone());
        tokio::task::spawn_blocking(move || check_reachable(admin.inner(), &config)).await??;
    }

    let specs = catalogue(config);
    let max_message_bytes = topic_max_message_bytes();
    let new_topics: Vec<NewTopic<'_>> = specs
        .iter()
        .map(|spec| {
            let topic = NewTopic::new(
                &spec.name,
                spec.partitions,
                TopicReplication::Fixed(config.replication_factor),
            );
            let topic = topic.set("max.message.bytes", &max_message_bytes);
            if spec.compacted {
                topic.set("cleanup.policy", "compact")
            } else {
                topic
            }
        })
        .collect();
    let options = AdminOptions::new()
        .operation_timeout(Some(config.request_timeout))
        .request_timeout(Some(config.request_timeout));
    let results = admin
        .create_topics(&new_topics, &options)
        .await
        .map_err(|source| TopicsError::Request {
            brokers: config.brokers.clone(),
            source,
        })?;

    specs
        .into_iter()
        .zip(results)
        .map(|(spec, result)| match result {
            Ok(_) => Ok((spec, TopicOutcome::Created)),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {
                Ok((spec, TopicOutcome::AlreadyExisted))
            }
            Err((topic, code)) => Err(TopicsError::Topic { topic, code }),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalogue_compacts_scripts_replays_and_changelogs_only() {
        let config = KafkaConfig::default();
        let compacted: Vec<_> = catalogue(&config)
            .into_iter()
            .filter(|topic| topic.compacted)
            .map(|topic| topic.name)
            .collect();
        assert_eq!(
            compacted,
            [
                "howk.scripts",
                "howk.replays",
                "howk-idempotency-changelog",
                "howk-circuit-changelog",
                "howk-timers-changelog"
            ]
        );
    }

    #[test]
    fn changelogs_are_co_partitioned_with_webhook_topics() {
        let config = KafkaConfig {
            partitions: 9,
            ..KafkaConfig::default()
        };
        for topic in catalogue(&config) {
            // The scripts and the replay jobs' progress are not keyed like the webhook topics.
            let expected = match topic.name.as_str() {
                "howk.scripts" | "howk.replays" => 1,
                _ => 9,
            };
            assert_eq!(topic.partitions, expected, "{}", topic.name);
        }
    }
}
