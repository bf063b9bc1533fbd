//! What happens to one webhook, with no Kafka and no RocksDB: records and their codecs, the Lua
//! engine and its modules, delivery, retry and circuit policies.
