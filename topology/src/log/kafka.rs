//! Kafka through rdkafka: the client settings every howk client shares, and a bounded
//! reachability check.
//!
//! librdkafka retries a down broker forever by design; howk's commands and readiness checks
//! instead ask for metadata with a deadline and name the broker address when it does not answer.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::client::Client;
use rdkafka::error::KafkaError;

use crate::config::KafkaConfig;

/// Why the broker could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KafkaClientError {
    #[error("cannot create a Kafka client for {brokers}")]
    Create {
        brokers: String,
        #[source]
        source: KafkaError,
    },
    #[error("Kafka broker {brokers} did not answer a metadata request within {timeout:?}")]
    Unreachable {
        brokers: String,
        timeout: Duration,
        #[source]
        source: KafkaError,
    },
}

/// Settings common to every client: bootstrap servers and how long requests may take.
pub fn client_config(config: &KafkaConfig) -> ClientConfig {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &config.brokers)
        .set("client.id", "howk")
        // librdkafka logs connection failures itself at error level; howk reports them once,
        // with the address, through KafkaClientError.
        .set("log_level", "3")
        .set(
            "socket.connection.setup.timeout.ms",
            config.request_timeout.as_millis().to_string(),
        );
    client
}

/// Asks the cluster for its metadata, bounded by `config.request_timeout`.
///
/// Blocks the calling thread: call it from `spawn_blocking` in async code.
pub fn check_reachable<C: rdkafka::ClientContext>(
    client: &Client<C>,
    config: &KafkaConfig,
) -> Result<(), KafkaClientError> {
    client
        .fetch_metadata(None, config.request_timeout)
        .map(|_| ())
        .map_err(|source| KafkaClientError::Unreachable {
            brokers: config.brokers.clone(),
            timeout: config.request_timeout,
            source,
        })
}
