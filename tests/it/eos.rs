//! Exactly-once at the edges of the group member's transactions (review H2): a commit that
//! failed must never be followed by a commit of its offsets without its outputs — not even the
//! one librdkafka makes when the consumer closes and the revocation callback runs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use howk_topology::KafkaConfig;
use howk_topology::log::kafka::{KafkaLog, KafkaMember, KafkaReader};
use howk_topology::log::{Event, GroupMember, Log, OutRecord, TopicPartition, TopicReader};

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

/// Two topics of `partitions` partitions each (an input and an output or changelog), a group
/// name, and a configuration on the test broker.
struct Fixture {
    brokers: String,
    input: String,
    output: String,
    group: String,
    config: KafkaConfig,
}

impl Fixture {
    async fn new(name: &str, partitions: i32) -> Self {
        let brokers = require_kafka();
        let (input, output) = (
            unique(&format!("{name}-in")),
            unique(&format!("{name}-out")),
        );
        create_topic(&brokers, &input, partitions).await;
        create_topic(&brokers, &output, partitions).await;
        Self {
            config: KafkaConfig {
                brokers: brokers.clone(),
                ..KafkaConfig::default()
            },
            group: unique(&format!("{name}-group")),
            brokers,
            input,
            output,
        }
    }
}

/// Either both a record's outputs and its offset are committed, or neither: here the outputs
/// were aborted, so the offset must not be committed either (the record is read again).
fn assert_nothing_committed(brokers: &str, input: &str, output: &str, group: &str) {
    let mut outputs = Tail::new(brokers, output);
    outputs.poll(Duration::from_secs(2));
    assert!(
        outputs.records.is_empty(),
        "an aborted output was committed"
    );
    assert_eq!(
        committed_offset(brokers, group, input),
        None,
        "the input offset was committed without its outputs"
    );
}

/// Writes one record to partition 0 of `input`, joins `group` on it and polls until the
/// member has that record.
fn member_with_one_record(
    log: &KafkaLog,
    group: &str,
    input: &Arc<str>,
) -> (KafkaMember, howk_topology::log::Record) {
    log.produce(vec![OutRecord {
        topic: Arc::clone(input),
        partition: Some(0),
        key: b"k".to_vec(),
        value: Some(b"in".to_vec()),
    }])
    .unwrap();
    let mut member = log
        .join(group, &unique("eos-member"), &[Arc::clone(input)])
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "no record arrived");
        if let Ok(Some(Event::Record(record))) = member.poll(Duration::from_millis(100)) {
            return (member, record);
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn offsets_of_a_transaction_the_broker_aborted_are_never_committed() {
    let Fixture {
        brokers,
        input,
        output,
        group,
        config,
    } = Fixture::new("eos", 1).await;
    let (input_for_log, output_for_log) = (input.clone(), output.clone());
    let commit_result = tokio::task::spawn_blocking(move || {
        let log = KafkaLog::new(config);
        let input: Arc<str> = Arc::from(input_for_log.as_str());
        let (mut member, record) = member_with_one_record(&log, &group, &input);
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

    assert_nothing_committed(&brokers, &input, &output, &group);
}

#[tokio::test(flavor = "multi_thread")]
async fn offsets_of_a_transaction_whose_output_failed_are_never_committed() {
    // One of a record's outputs cannot be delivered (a partition that does not exist), so the
    // transaction's commit fails and aborts. The revocation callback librdkafka runs when the
    // failed thread's consumer closes then committed the staged offset in a fresh, empty
    // transaction: the record was marked done with none of its outputs (lost).
    let Fixture {
        brokers,
        input,
        output,
        group,
        config,
    } = Fixture::new("eos", 1).await;
    let (input_for_log, output_for_log) = (input.clone(), output.clone());
    let group = tokio::task::spawn_blocking(move || {
        let log = KafkaLog::new(config);
        let input: Arc<str> = Arc::from(input_for_log.as_str());
        let output: Arc<str> = Arc::from(output_for_log.as_str());
        let (mut member, record) = member_with_one_record(&log, &group, &input);
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
    assert_nothing_committed(&brokers, &input, &output, &group);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revocation_records_changelog_ends_before_the_next_owner_writes() {
    // Review H5(a): a task closed after its revocation read its changelog's end offset at close
    // time, when the next owner may already have written to it; a checkpoint at that offset
    // makes a later return skip the other owner's writes. The ends are now recorded inside the
    // revocation, right after its commit, while the partition is still owned.
    let Fixture {
        input,
        output: changelog,
        group,
        config,
        ..
    } = Fixture::new("h5", 2).await;
    tokio::task::spawn_blocking(move || {
        let log = Arc::new(KafkaLog::new(config));
        let input: Arc<str> = Arc::from(input.as_str());
        let changelog: Arc<str> = Arc::from(changelog.as_str());
        let mut first = log.join(&group, "a", &[Arc::clone(&input)]).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut owned = Vec::new();
        while owned.len() < 2 {
            assert!(Instant::now() < deadline, "never assigned");
            if let Ok(Some(Event::Assigned(partitions))) = first.poll(Duration::from_millis(100)) {
                owned.extend(partitions);
            }
        }
        for source in &owned {
            let log_of = TopicPartition::new(&changelog, source.partition);
            first.track_changelogs(source, vec![log_of.clone()]);
            first
                .send(OutRecord {
                    topic: Arc::clone(&changelog),
                    partition: Some(source.partition),
                    key: b"k".to_vec(),
                    value: Some(b"first owner".to_vec()),
                })
                .unwrap();
        }
        first.commit().unwrap();
        let mut reader = log.reader().unwrap();
        let end_before = |reader: &mut KafkaReader, partition: i32| {
            reader
                .end_offset(&TopicPartition::new(&changelog, partition))
                .unwrap()
        };
        let ends_after_first: Vec<i64> = (0..2).map(|p| end_before(&mut reader, p)).collect();

        // A second member joins; it writes to the changelog of whatever it is given.
        let (taken_tx, taken_rx) = std::sync::mpsc::channel::<i32>();
        let second = {
            let (log, input, changelog, group) = (
                Arc::clone(&log),
                Arc::clone(&input),
                Arc::clone(&changelog),
                group.clone(),
            );
            std::thread::spawn(move || {
                let mut second = log.join(&group, "b", &[input]).unwrap();
                let deadline = Instant::now() + Duration::from_secs(60);
                loop {
                    assert!(Instant::now() < deadline, "the second member got nothing");
                    if let Ok(Some(Event::Assigned(partitions))) =
                        second.poll(Duration::from_millis(100))
                    {
                        let partition = partitions[0].partition;
                        second
                            .send(OutRecord {
                                topic: Arc::clone(&changelog),
                                partition: Some(partition),
                                key: b"k".to_vec(),
                                value: Some(b"second owner".to_vec()),
                            })
                            .unwrap();
                        second.commit().unwrap();
                        taken_tx.send(partition).unwrap();
                        // Stay in the group until the test is done.
                        while second.poll(Duration::from_millis(100)).is_ok() {
                            if taken_tx.send(partition).is_err() {
                                return;
                            }
                        }
                        return;
                    }
                }
            })
        };
        // The first member sees the revocation (and keeps polling so the rebalance completes).
        let mut revoked = Vec::new();
        let taken = loop {
            assert!(Instant::now() < deadline, "no revocation");
            if let Ok(Some(Event::Revoked(partitions))) = first.poll(Duration::from_millis(100)) {
                revoked.extend(partitions);
            }
            if let Ok(partition) = taken_rx.try_recv() {
                break partition;
            }
        };
        let source = TopicPartition::new(&input, taken);
        assert!(revoked.contains(&source), "{revoked:?} lacks {source}");
        // By now the second owner has written to that changelog: an end read now includes it.
        let log_of = TopicPartition::new(&changelog, taken);
        let end_now = end_before(&mut reader, taken);
        assert!(end_now > ends_after_first[taken as usize]);
        let recorded = first.revoked_changelog_ends(&source);
        assert_eq!(
            recorded.get(&log_of),
            Some(&ends_after_first[taken as usize]),
            "the recorded end is where the first owner's writes end"
        );
        drop(taken_rx);
        drop(first);
        let _ = second.join();
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replay_from_zero_starts_at_the_oldest_record_left() {
    // Review M2: once retention deleted a topic's first records, a reader assigned at offset 0
    // jumped to the end (librdkafka's default reset), and a status rebuild folded nothing.
    let brokers = require_kafka();
    let topic = unique("m2-results");
    create_topic(&brokers, &topic, 1).await;
    let log = KafkaLog::new(KafkaConfig {
        brokers: brokers.clone(),
        ..KafkaConfig::default()
    });
    let name: Arc<str> = Arc::from(topic.as_str());
    log.produce(
        (0..5)
            .map(|n| OutRecord {
                topic: Arc::clone(&name),
                partition: Some(0),
                key: b"k".to_vec(),
                value: Some(format!("r{n}").into_bytes()),
            })
            .collect(),
    )
    .unwrap();
    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .create()
            .unwrap();
    let mut before = TopicPartitionList::new();
    before
        .add_partition_offset(&topic, 0, Offset::Offset(3))
        .unwrap();
    admin
        .delete_records(&before, &rdkafka::admin::AdminOptions::new())
        .await
        .unwrap();

    let values = tokio::task::spawn_blocking(move || {
        let mut reader = log.reader().unwrap();
        reader
            .assign(&[(TopicPartition::new(&name, 0), 0)])
            .unwrap();
        let mut values = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            match reader.poll(Duration::from_millis(200)).unwrap() {
                Some(howk_topology::log::ReadEvent::Record(record)) => {
                    values.push(String::from_utf8(record.value.unwrap().to_vec()).unwrap())
                }
                Some(howk_topology::log::ReadEvent::EndOfPartition(_)) => break,
                None => {}
            }
        }
        values
    })
    .await
    .unwrap();
    assert_eq!(values, ["r3", "r4"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fenced_member_fails_its_poll_instead_of_idling_forever() {
    // Found by the chaos soak: after a broker restart the member got FencedInstanceId, a fatal
    // consumer error. Its poll logged it and returned nothing from then on, so every partition
    // of that process stalled for good. A fatal consumer error must fail the poll, so the stream
    // thread restarts with a fresh member. Here a second member with the same instance id fences
    // the first.
    let Fixture {
        input,
        group,
        config,
        ..
    } = Fixture::new("fenced", 1).await;
    let outcome = tokio::task::spawn_blocking(move || {
        let log = KafkaLog::new(config);
        let input: Arc<str> = Arc::from(input.as_str());
        let instance = unique("fenced-member");
        let assigned = |member: &mut KafkaMember| {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                assert!(Instant::now() < deadline, "no assignment");
                if let Ok(Some(Event::Assigned(_))) = member.poll(Duration::from_millis(100)) {
                    return;
                }
            }
        };
        let mut first = log.join(&group, &instance, &[Arc::clone(&input)]).unwrap();
        assigned(&mut first);
        let mut second = log.join(&group, &instance, &[Arc::clone(&input)]).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let _ = second.poll(Duration::from_millis(50));
            if let Err(error) = first.poll(Duration::from_millis(50)) {
                return Some(error.to_string());
            }
        }
        None
    })
    .await
    .unwrap();
    let error = outcome.expect("the fenced member kept polling as if nothing happened");
    assert!(error.contains("poll"), "{error}");
}
