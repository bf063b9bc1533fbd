//! Exactly-once at the edges of the group member's transactions (review H2): a commit that
//! failed must never be followed by a commit of its offsets without its outputs — not even the
//! one librdkafka makes when the consumer closes and the revocation callback runs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use howk_topology::KafkaConfig;
use howk_topology::log::kafka::KafkaLog;
use howk_topology::log::{Event, GroupMember, Log, OutRecord, TopicPartition};

use crate::helpers::howk::Tail;
use crate::helpers::{create_topic, require_kafka, unique};

/// The member's transaction timeout (kafka.rs), plus the broker's 1 s abort check and margin.
const PAST_TRANSACTION_TIMEOUT: Duration = Duration::from_secs(13);

fn committed_offset(brokers: &str, group: &str, topic: &str) -> Option<i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .create()
        .unwrap();
    let mut list = TopicPartitionList::new();
    list.add_partition(topic, 0);
    let committed = consumer
        .committed_offsets(list, Duration::from_secs(10))
        .unwrap();
    match committed.find_partition(topic, 0).unwrap().offset() {
        Offset::Offset(offset) => Some(offset),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn offsets_of_a_transaction_the_broker_aborted_are_never_committed() {
    let brokers = require_kafka();
    let (input, output, group) = (unique("eos-in"), unique("eos-out"), unique("eos-group"));
    create_topic(&brokers, &input, 1).await;
    create_topic(&brokers, &output, 1).await;
    let config = KafkaConfig {
        brokers: brokers.clone(),
        ..KafkaConfig::default()
    };
    let (input_for_log, output_for_log) = (input.clone(), output.clone());
    let commit_result = tokio::task::spawn_blocking(move || {
        let log = KafkaLog::new(config);
        let input: Arc<str> = Arc::from(input_for_log.as_str());
        log.produce(vec![OutRecord {
            topic: Arc::clone(&input),
            partition: Some(0),
            key: b"k".to_vec(),
            value: Some(b"in".to_vec()),
        }])
        .unwrap();
        let mut member = log
            .join(&group, &unique("eos-member"), &[Arc::clone(&input)])
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        let record = loop {
            assert!(Instant::now() < deadline, "no record arrived");
            if let Ok(Some(Event::Record(record))) = member.poll(Duration::from_millis(100)) {
                break record;
            }
        };
        member
            .send(OutRecord {
                topic: Arc::from(output_for_log.as_str()),
                partition: Some(0),
                key: b"k".to_vec(),
                value: Some(b"out".to_vec()),
            })
            .unwrap();
        member.stage_offsets(&[(TopicPartition::new(&input, 0), record.offset + 1)]);
        // The fault: a stall past the transaction timeout, so the broker aborts the open
        // transaction (what a stream thread stuck behind a slow store or lock would meet).
        std::thread::sleep(PAST_TRANSACTION_TIMEOUT);
        let result = member.commit().map_err(|e| e.to_string());
        // Closing the consumer runs the revocation callback.
        drop(member);
        (result, group)
    })
    .await
    .unwrap();
    let (result, group) = commit_result;
    assert!(
        result.is_err(),
        "the commit after the broker's abort must fail"
    );

    // Either both the output and the offset are committed, or neither: the output was aborted,
    // so the offset must not be committed either (the record is then read again).
    let mut outputs = Tail::new(&brokers, &output);
    outputs.poll(Duration::from_secs(2));
    assert!(
        outputs.records.is_empty(),
        "the aborted output is invisible"
    );
    assert_eq!(
        committed_offset(&brokers, &group, &input),
        None,
        "the input offset was committed without its output"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn offsets_of_a_transaction_whose_output_failed_are_never_committed() {
    // One of a record's outputs cannot be delivered (a partition that does not exist), so the
    // transaction's commit fails and aborts. The revocation callback librdkafka runs when the
    // failed thread's consumer closes then committed the staged offset in a fresh, empty
    // transaction: the record was marked done with none of its outputs (lost).
    let brokers = require_kafka();
    let (input, output, group) = (unique("eos-in"), unique("eos-out"), unique("eos-group"));
    create_topic(&brokers, &input, 1).await;
    create_topic(&brokers, &output, 1).await;
    let config = KafkaConfig {
        brokers: brokers.clone(),
        ..KafkaConfig::default()
    };
    let (input_for_log, output_for_log) = (input.clone(), output.clone());
    let group = tokio::task::spawn_blocking(move || {
        let log = KafkaLog::new(config);
        let input: Arc<str> = Arc::from(input_for_log.as_str());
        let output: Arc<str> = Arc::from(output_for_log.as_str());
        log.produce(vec![OutRecord {
            topic: Arc::clone(&input),
            partition: Some(0),
            key: b"k".to_vec(),
            value: Some(b"in".to_vec()),
        }])
        .unwrap();
        let mut member = log
            .join(&group, &unique("eos-member"), &[Arc::clone(&input)])
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        let record = loop {
            assert!(Instant::now() < deadline, "no record arrived");
            if let Ok(Some(Event::Record(record))) = member.poll(Duration::from_millis(100)) {
                break record;
            }
        };
        let output_record = |partition, value: &[u8]| OutRecord {
            topic: Arc::clone(&output),
            partition: Some(partition),
            key: b"k".to_vec(),
            value: Some(value.to_vec()),
        };
        member.send(output_record(0, b"first")).unwrap();
        // The topic has one partition: librdkafka fails this one (now or at delivery).
        let refused_now = member.send(output_record(99, b"second")).is_err();
        if !refused_now {
            member.stage_offsets(&[(TopicPartition::new(&input, 0), record.offset + 1)]);
            assert!(
                member.commit().is_err(),
                "the commit of a failed output fails"
            );
        }
        // The stream thread fails here; its member is dropped and the consumer closes.
        drop(member);
        group
    })
    .await
    .unwrap();
    let mut outputs = Tail::new(&brokers, &output);
    outputs.poll(Duration::from_secs(2));
    assert!(outputs.records.is_empty(), "a partial output was committed");
    assert_eq!(
        committed_offset(&brokers, &group, &input),
        None,
        "the input offset was committed without its outputs"
    );
}
