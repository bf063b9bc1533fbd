//! What happens to one webhook, with no Kafka and no RocksDB: records and their codecs, the Lua
//! engine and its modules, delivery, retry and circuit policies.
//!
//! Layout:
//! - [`ids`]: identifiers and the tenant namespace (SPEC §1)
//! - [`record`]: the records of SPEC §2 and their codecs
//! - [`lua`]: the sandboxed script engine (SPEC §4)
//! - [`delivery`]: signing and classifying a delivery (SPEC §5)
//! - [`policy`]: retry backoff and the circuit breaker (SPEC §5)
//! - [`net`]: which addresses howk may connect to for a tenant (SSRF rule)

pub mod delivery;
pub mod ids;
pub mod lua;
pub mod net;
pub mod policy;
pub mod record;
