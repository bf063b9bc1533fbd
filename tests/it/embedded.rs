//! The same happy path on the embedded log (the topology test driver of `howk dev`): the
//! topology runs in this process, records go in and come out through the `Log` trait.

use std::sync::Arc;
use std::time::Duration;

use howk_processor::delivery::client::{DeliveryClient, DeliveryConfig};
use howk_processor::lua::LuaConfig;
use howk_processor::lua::pool::EnginePool;
use howk_processor::lua::template::{TemplateResolver, process_env};
use howk_topology::builder::{Engines, TopologyConfig, start};
use howk_topology::log::embedded::EmbeddedLog;
use howk_topology::log::{Log, OutRecord, ReadEvent, TopicPartition, TopicReader};
use howk_topology::topics::catalogue;
use howk_topology::{KafkaConfig, ProcessingConfig};

use crate::delivery::{assert_happy_path, happy_path_workload};
use crate::helpers::sink::{Reply, WebhookSink};
use crate::helpers::wait_for;

/// Every committed record of `topic`.
fn read_all(log: &EmbeddedLog, topic: &str) -> Vec<serde_json::Value> {
    let mut reader = log.reader().unwrap();
    let partitions = log.partitions(topic).unwrap();
    let mut values = Vec::new();
    for partition in 0..partitions {
        reader
            .assign(&[(TopicPartition::new(topic, partition), 0)])
            .unwrap();
        while let Some(ReadEvent::Record(record)) = reader.poll(Duration::from_millis(10)).unwrap()
        {
            values.push(serde_json::from_slice(&record.value.unwrap()).unwrap());
        }
    }
    values
}

/// The topology on the embedded log, its stores under `dir`.
fn topology_config(kafka: &KafkaConfig, dir: &std::path::Path) -> TopologyConfig {
    TopologyConfig {
        kafka: kafka.clone(),
        processing: ProcessingConfig {
            data_dir: dir.join("state"),
            instance_id: "embedded".into(),
            ..ProcessingConfig::default()
        },
        ..TopologyConfig::default()
    }
}

/// A delivery client that may reach the receivers on loopback.
fn loopback_client() -> DeliveryClient {
    DeliveryClient::new(
        &DeliveryConfig {
            allowed_cidrs: vec!["127.0.0.0/8".into()],
            ..DeliveryConfig::default()
        },
        TemplateResolver::new(process_env(), Vec::new()),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_happy_path_runs_on_the_embedded_log() {
    let sink = WebhookSink::start().await;
    let dir = tempfile::tempdir().unwrap();
    let kafka = KafkaConfig {
        partitions: 3,
        ..KafkaConfig::default()
    };
    let log =
        Arc::new(EmbeddedLog::open(Some(&dir.path().join("log")), &catalogue(&kafka)).unwrap());
    let config = topology_config(&kafka, dir.path());
    let lua = LuaConfig::default();
    let engines = Engines {
        pool: Some(EnginePool::start(lua.engine_settings(process_env()), 2, 64)),
        client: loopback_client(),
    };
    let handle = tokio::runtime::Handle::current();
    let running = {
        let log = Arc::clone(&log);
        tokio::task::spawn_blocking(move || start(log, config, engines, handle))
            .await
            .unwrap()
            .unwrap()
    };

    let (webhooks, expected) = happy_path_workload(&sink);
    let pending: Arc<str> = Arc::from(kafka.topics.pending.as_str());
    log.produce(
        webhooks
            .into_iter()
            .map(|(key, value)| OutRecord {
                topic: Arc::clone(&pending),
                partition: None,
                key: key.into_bytes(),
                value: Some(value),
            })
            .collect(),
    )
    .unwrap();

    wait_for(
        "1000 delivered results",
        Duration::from_secs(60),
        || async {
            let delivered = read_all(&log, &kafka.topics.results)
                .into_iter()
                .filter(|r| r["outcome"] == "delivered")
                .count();
            (delivered >= 1000).then_some(())
        },
    )
    .await;
    assert_happy_path(&sink, &expected, &read_all(&log, &kafka.topics.results));
    let status = running.status.clone();
    let window = status
        .window(chrono::Utc::now().timestamp_millis(), 60)
        .unwrap();
    assert_eq!(window.counters.enqueued, 1000);
    assert_eq!(window.counters.delivered, 1000);
    assert_eq!(window.endpoints.len(), 5);
    // Healthy endpoints leave nothing behind in the deliver tasks' circuit caches (review M4);
    // the other in-process test delivers only to a healthy endpoint too.
    assert_eq!(howk_topology::metrics::metrics().circuits_cached.get(), 0);
    tokio::task::spawn_blocking(move || running.stop())
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_closed_task_aborts_its_running_attempts() {
    // Review LOW: a closed (or revoked) deliver task left its attempts running; after a
    // reassignment to the same process the old incarnation's attempt ran beside the new one's
    // for the same endpoint. Now closing the task aborts them: the old request is dropped.
    let sink = WebhookSink::start().await;
    sink.plan("slow", [Reply::status(200).after(Duration::from_secs(20))]);
    let dir = tempfile::tempdir().unwrap();
    let kafka = KafkaConfig {
        partitions: 1,
        ..KafkaConfig::default()
    };
    let log =
        Arc::new(EmbeddedLog::open(Some(&dir.path().join("log")), &catalogue(&kafka)).unwrap());
    let start_topology = |log: Arc<EmbeddedLog>| {
        let mut config = topology_config(&kafka, dir.path());
        config.processing.shutdown_grace = Duration::from_millis(100);
        let engines = Engines {
            pool: None,
            client: loopback_client(),
        };
        let handle = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || start(log, config, engines, handle))
    };
    let running = start_topology(Arc::clone(&log)).await.unwrap().unwrap();
    log.produce(vec![OutRecord {
        topic: Arc::from(kafka.topics.pending.as_str()),
        partition: None,
        key: b"slow:1".to_vec(),
        value: Some(
            format!(r#"{{"endpoint": "{}", "payload": 1}}"#, sink.url("slow")).into_bytes(),
        ),
    }])
    .unwrap();
    wait_for("the attempt in flight", Duration::from_secs(30), || async {
        (sink.in_flight("slow").0 == 1).then_some(())
    })
    .await;
    tokio::task::spawn_blocking(move || running.stop())
        .await
        .unwrap()
        .unwrap();
    // The task closed with its attempt unfinished: the attempt is aborted, its request dropped.
    wait_for(
        "the old request to be dropped",
        Duration::from_secs(10),
        || async { (sink.in_flight("slow").0 == 0).then_some(()) },
    )
    .await;

    // The same process takes the partition again: the webhook is redone, alone.
    let running = start_topology(Arc::clone(&log)).await.unwrap().unwrap();
    wait_for("the redone attempt", Duration::from_secs(30), || async {
        (sink.received("slow").len() == 2).then_some(())
    })
    .await;
    assert_eq!(sink.in_flight("slow").1, 1, "two attempts ran at once");
    tokio::task::spawn_blocking(move || running.stop())
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_black_holed_endpoint_does_not_hold_back_its_partition() {
    // Review H3, on the embedded log: 40 webhooks to an endpoint that never answers, then one
    // to a fast endpoint on the same (only) partition. The fast one's result must not wait for
    // the black hole's attempts (30 s each, one at a time).
    let sink = WebhookSink::start().await;
    sink.plan(
        "hole",
        std::iter::repeat_n(Reply::status(200).after(Duration::from_secs(3600)), 40),
    );
    let dir = tempfile::tempdir().unwrap();
    let kafka = KafkaConfig {
        partitions: 1,
        ..KafkaConfig::default()
    };
    let log =
        Arc::new(EmbeddedLog::open(Some(&dir.path().join("log")), &catalogue(&kafka)).unwrap());
    let mut config = topology_config(&kafka, dir.path());
    config.processing.shutdown_grace = Duration::from_millis(100);
    config.delivery.max_in_flight = 20;
    let engines = Engines {
        pool: None,
        client: loopback_client(),
    };
    let handle = tokio::runtime::Handle::current();
    let running = {
        let log = Arc::clone(&log);
        tokio::task::spawn_blocking(move || start(log, config, engines, handle))
            .await
            .unwrap()
            .unwrap()
    };
    let pending: Arc<str> = Arc::from(kafka.topics.pending.as_str());
    let record = |key: &str, endpoint: String, n: usize| OutRecord {
        topic: Arc::clone(&pending),
        partition: None,
        key: key.as_bytes().to_vec(),
        value: Some(format!(r#"{{"endpoint": "{endpoint}", "payload": {n}}}"#).into_bytes()),
    };
    let mut records: Vec<OutRecord> = (0..40)
        .map(|n| record("hole:1", sink.url("hole"), n))
        .collect();
    records.push(record("fast:1", sink.url("fast"), 40));
    log.produce(records).unwrap();
    wait_for(
        "the fast webhook's delivered result",
        Duration::from_secs(5),
        || async {
            read_all(&log, &kafka.topics.results)
                .iter()
                .any(|r| r["outcome"] == "delivered" && r["endpoint"] == sink.url("fast"))
                .then_some(())
        },
    )
    .await;
    assert_eq!(sink.in_flight("hole").1, 1);
    tokio::task::spawn_blocking(move || running.stop())
        .await
        .unwrap()
        .unwrap();
}
