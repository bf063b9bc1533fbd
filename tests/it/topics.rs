//! `howk topics create`: every SPEC §2 topic with its layout, idempotent, and a precise error
//! when the broker is down.

use std::process::Command;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;

use crate::helpers::{require_kafka, unique};

/// Runs the real binary with topic names under a unique prefix.
fn howk_topics_create(brokers: &str, prefix: &str) -> std::process::Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_howk"));
    command
        .args(["topics", "create"])
        .env("HOWK_KAFKA_BROKERS", brokers)
        .env("HOWK_KAFKA_PARTITIONS", "3")
        .env("HOWK_KAFKA_REQUEST_TIMEOUT", "3s")
        .env("HOWK_KAFKA_TOPICS_CHANGELOG_PREFIX", format!("{prefix}-"));
    for topic in [
        "pending",
        "scripts",
        "delivery",
        "retry",
        "results",
        "deadletter",
        "replays",
    ] {
        command.env(
            format!("HOWK_KAFKA_TOPICS_{}", topic.to_uppercase()),
            format!("{prefix}.{topic}"),
        );
    }
    command.output().expect("run howk")
}

async fn cleanup_policy(brokers: &str, topic: &str) -> String {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let results = admin
        .describe_configs(&[ResourceSpecifier::Topic(topic)], &AdminOptions::new())
        .await
        .expect("describe_configs");
    let resource = results.into_iter().next().unwrap().expect("topic config");
    resource
        .get("cleanup.policy")
        .and_then(|entry| entry.value.clone())
        .expect("cleanup.policy entry")
}

#[tokio::test]
async fn topics_create_makes_every_topic_with_its_policy_and_is_idempotent() {
    let brokers = require_kafka();
    let prefix = unique("t");

    let first = howk_topics_create(&brokers, &prefix);
    let stdout = String::from_utf8_lossy(&first.stdout);
    assert!(
        first.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert_eq!(stdout.matches("Created").count(), 10, "{stdout}");

    assert_eq!(
        cleanup_policy(&brokers, &format!("{prefix}.scripts")).await,
        "compact"
    );
    assert_eq!(
        cleanup_policy(&brokers, &format!("{prefix}-timers-changelog")).await,
        "compact"
    );
    assert_eq!(
        cleanup_policy(&brokers, &format!("{prefix}.pending")).await,
        "delete"
    );
    assert_eq!(
        cleanup_policy(&brokers, &format!("{prefix}.replays")).await,
        "compact"
    );

    let second = howk_topics_create(&brokers, &prefix);
    let stdout = String::from_utf8_lossy(&second.stdout);
    assert!(second.status.success(), "{stdout}");
    assert_eq!(stdout.matches("AlreadyExisted").count(), 10, "{stdout}");
}

#[test]
fn topics_create_against_a_down_broker_fails_fast_naming_the_address() {
    // Port 1 on loopback: nothing listens there.
    let start = Instant::now();
    let output = howk_topics_create("127.0.0.1:1", &unique("down"));
    let elapsed = start.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("127.0.0.1:1"), "{stderr}");
    assert!(elapsed < Duration::from_secs(15), "took {elapsed:?}");
}
