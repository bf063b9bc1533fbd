//! What happens to one webhook, with no Kafka and no RocksDB: records and their codecs, the Lua
//! engine and its modules, delivery, retry and circuit policies.
//!
//! Layout:
//! - [`ids`]: identifiers and the tenant namespace (SPEC §1)
//! - [`lua`]: the sandboxed script engine (SPEC §4)
//! - [`net`]: which addresses howk may connect to for a tenant (SSRF rule)

pub mod ids;
pub mod lua;
pub mod net;
