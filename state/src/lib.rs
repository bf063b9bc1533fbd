//! howk's local state: stores owned by one task each, rebuilt from Kafka (ARCHITECTURE.md,
//! "State stores"). No webhook logic lives here.
//!
//! Layout:
//! - [`store`]: the `Store` seam — ordered keys, writes buffered until `commit`, which applies
//!   them atomically and returns them as changelog records; `restore` applies a changelog record
//! - [`rocks`]: the RocksDB store; [`memory`]: an in-memory one for fast tests
//! - [`versioned`]: the scripts table — every version of a key by `valid_from`, latest and as-of
//! - [`timer`]: retry timers ordered by due time
//! - [`checkpoint`]: the offsets a store has applied, written atomically beside it
//!
//! Invariant: a task writes its store and its changelog in the same Kafka transaction as its
//! outputs and input offsets, so after a crash the changelog is the truth and the store is
//! rebuilt from it up to the checkpoint.

pub mod checkpoint;
pub mod memory;
pub mod rocks;
pub mod store;
pub mod timer;
pub mod versioned;

pub use store::{ChangelogRecord, Entry, Store, StoreError};
