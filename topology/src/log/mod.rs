//! The `Log`: partitioned, offset-addressed, keyed topics.
//!
//! - [`kafka`]: the production log — client settings shared by every rdkafka client howk makes,
//!   and the reachability check that turns "broker down" into a precise error instead of a hang.
//!
//! The topology work adds the `Log` trait itself and the embedded log beside Kafka.

pub mod kafka;
