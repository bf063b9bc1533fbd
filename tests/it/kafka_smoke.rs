//! The broker works the way the topology relies on: keyed records round-trip, and transactions
//! are all-or-nothing for `read_committed` consumers.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use crate::helpers::{create_topic, require_kafka, unique};

fn consumer(brokers: &str, topic: &str, isolation: &str) -> StreamConsumer {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("smoke-group"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("isolation.level", isolation)
        .create()
        .expect("create consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    consumer
}

/// Reads records until `count` arrived or the topic stays quiet for `quiet`.
async fn read_values(consumer: &StreamConsumer, count: usize, quiet: Duration) -> Vec<String> {
    let mut values = Vec::new();
    while values.len() < count {
        match tokio::time::timeout(quiet, consumer.recv()).await {
            Ok(Ok(message)) => values
                .push(String::from_utf8(message.payload().unwrap_or_default().to_vec()).unwrap()),
            Ok(Err(error)) => panic!("consume failed: {error}"),
            Err(_) => break,
        }
    }
    values
}

#[tokio::test]
async fn produced_records_are_consumed_with_key_headers_and_order() {
    let brokers = require_kafka();
    let topic = unique("smoke-roundtrip");
    create_topic(&brokers, &topic, 1).await;

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("acks", "all")
        .create()
        .expect("create producer");
    for i in 0..10 {
        let value = format!("value-{i}");
        producer
            .send(
                FutureRecord::to(&topic)
                    .key("cfg-1")
                    .payload(&value)
                    .headers(OwnedHeaders::new().insert(Header {
                        key: "n",
                        value: Some(&i.to_string()),
                    })),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(error, _)| error)
            .expect("produce");
    }

    let consumer = consumer(&brokers, &topic, "read_committed");
    let mut seen = Vec::new();
    while seen.len() < 10 {
        let message = tokio::time::timeout(Duration::from_secs(20), consumer.recv())
            .await
            .expect("records arrive within 20 s")
            .expect("consume");
        assert_eq!(message.key(), Some(&b"cfg-1"[..]));
        let header = message.headers().expect("headers").get(0);
        assert_eq!(header.key, "n");
        seen.push(String::from_utf8(message.payload().unwrap().to_vec()).unwrap());
    }
    let expected: Vec<String> = (0..10).map(|i| format!("value-{i}")).collect();
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn committed_transaction_is_visible_and_aborted_one_is_not() {
    let brokers = require_kafka();
    let topic = unique("smoke-txn");
    create_topic(&brokers, &topic, 1).await;

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("transactional.id", unique("smoke-txn-producer"))
        .create()
        .expect("create transactional producer");
    let timeout = Duration::from_secs(20);
    producer
        .init_transactions(timeout)
        .expect("init_transactions");

    producer.begin_transaction().expect("begin");
    for value in ["aborted-1", "aborted-2"] {
        producer
            .send(FutureRecord::<str, str>::to(&topic).payload(value), timeout)
            .await
            .map_err(|(error, _)| error)
            .expect("produce in aborted txn");
    }
    producer.abort_transaction(timeout).expect("abort");

    producer.begin_transaction().expect("begin");
    for value in ["committed-1", "committed-2"] {
        producer
            .send(FutureRecord::<str, str>::to(&topic).payload(value), timeout)
            .await
            .map_err(|(error, _)| error)
            .expect("produce in committed txn");
    }
    producer.commit_transaction(timeout).expect("commit");

    // read_committed sees exactly the committed records; wait past them for stragglers.
    let committed = consumer(&brokers, &topic, "read_committed");
    let values = read_values(&committed, 3, Duration::from_secs(5)).await;
    assert_eq!(values, ["committed-1", "committed-2"]);

    // read_uncommitted sees the aborted ones too: the abort really happened on the broker.
    let uncommitted = consumer(&brokers, &topic, "read_uncommitted");
    let values = read_values(&uncommitted, 4, Duration::from_secs(20)).await;
    assert_eq!(
        values,
        ["aborted-1", "aborted-2", "committed-1", "committed-2"]
    );
}
