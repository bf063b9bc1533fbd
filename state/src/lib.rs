//! howk's local state: RocksDB stores, each owned by one task and rebuilt from Kafka.
//!
//! Layout (filled in by the topology work):
//! - `store`: the `Store` trait every store implements
//! - `kv`, `versioned`, `timer`, `window`: the store kinds of ARCHITECTURE.md
//! - `changelog`, `restore`, `checkpoint`: how a store survives a crash or a move
//!
//! This crate knows nothing of webhooks; `processor` and `state` never import each other.
