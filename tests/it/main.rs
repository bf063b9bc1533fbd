//! Integration tests: one binary, a module per area, against the real Kafka broker and real
//! Redis that `./scripts/test` starts (addresses from `HOWK_TEST_KAFKA_BROKERS` and
//! `HOWK_TEST_REDIS_URL`, loopback defaults).

mod helpers;

mod api;
mod chaos;
mod crash;
mod delivery;
mod embedded;
mod eos;
mod fairness;
mod kafka_smoke;
mod lua_http;
mod lua_kv;
mod lua_oauth;
mod poison;
mod rebalance;
mod redis_smoke;
mod replay;
mod script_cli;
mod scripts_table;
mod signing;
mod topics;
mod transformers;
