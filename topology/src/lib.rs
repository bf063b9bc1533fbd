//! howk's stream graph, in the style of Kafka Streams' Processor API.
//!
//! Layout, in flow order:
//! - [`config`]: the `kafka` section of the configuration (brokers, topic names, partitions)
//! - [`topics`]: the catalogue of SPEC §2 topics and `howk topics create`
//! - [`log`]: the `Log` seam — Kafka through rdkafka, and the embedded log
//! - [`scripts_table`]: `howk.scripts` materialized on every instance, versioned, with a ready
//!   signal and the `script_hash` fence
//! - [`processor`]: the `Processor` seam (process, complete, punctuate, close) and its context
//! - [`restore`]: opening a task's store — kept after a clean close, else rebuilt from its changelog
//! - [`stage`]: ingest → deliver → retry, and status
//! - [`stream_thread`]: polls, dispatches to tasks, commits transactions, handles rebalances
//! - [`metrics`]: the Prometheus registry the stages and the API report to
//! - [`builder`]: which stage reads which topic; the restart loop
//! - [`replay`]: replay jobs over the log (re-driving dead letters)
//!
//! Dependencies point one way: `api → topology → {processor, state}`.

pub mod builder;
pub mod config;
pub mod log;
pub mod metrics;
pub mod processor;
pub mod replay;
pub mod restore;
pub mod scripts_table;
pub mod stage;
pub mod stream_thread;
pub mod topics;

pub use config::{
    DlqConfig, IdempotencyConfig, KafkaConfig, ProcessingConfig, ReplayConfig, ScriptsConfig,
    StatusConfig, TopicNames,
};
