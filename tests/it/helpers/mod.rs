//! What every integration test shares: where the services are, unique names, and waiting on a
//! condition with a deadline (never a bare sleep).

use std::future::Future;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};

/// The broker `./scripts/test` started.
pub fn kafka_brokers() -> String {
    std::env::var("HOWK_TEST_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".to_owned())
}

/// The Redis `./scripts/test` started.
pub fn redis_url() -> String {
    std::env::var("HOWK_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// `name` with a suffix unique to this process and call, so tests never share topics or keys.
pub fn unique(name: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{name}-{}-{nanos}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Fails the test at once, naming the address, when no broker answers: a stopped broker must
/// read as "Kafka is down", never as a hang or a puzzling assertion.
pub fn require_kafka() -> String {
    let brokers = kafka_brokers();
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("log_level", "0")
        .create()
        .expect("create probe consumer");
    if let Err(error) = consumer.fetch_metadata(None, Duration::from_secs(5)) {
        panic!(
            "Kafka is not reachable at {brokers} ({error}); start it with `scripts/kafka start` \
             or run the suite through `./scripts/test`"
        );
    }
    brokers
}

/// Creates a topic for one test and waits until the broker serves it.
pub async fn create_topic(brokers: &str, name: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("create admin client");
    let results = admin
        .create_topics(
            &[NewTopic::new(name, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("create_topics request");
    for result in results {
        result.unwrap_or_else(|(topic, code)| panic!("create {topic}: {code}"));
    }
}

/// Polls `condition` until it returns `Some`, failing with `what` after `deadline`.
pub async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, mut condition: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = condition().await {
            return value;
        }
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub mod howk;
pub mod lua;
pub mod own_broker;
pub mod private_redis;
pub mod receiver;
pub mod sink;
