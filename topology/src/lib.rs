//! howk's stream graph, in the style of Kafka Streams' Processor API.
//!
//! Layout, in flow order:
//! - [`config`]: the `kafka` section of the configuration (brokers, topic names, partitions)
//! - [`topics`]: the catalogue of SPEC §2 topics and `howk topics create`
//! - [`log`]: the `Log` seam — Kafka through rdkafka (and, with the topology work, an embedded log)
//!
//! Dependencies point one way: `api → topology → {processor, state}`.

pub mod config;
pub mod log;
pub mod topics;

pub use config::{KafkaConfig, TopicNames};
