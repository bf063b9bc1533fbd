//! The same happy path on the embedded log (the topology test driver of `howk dev`): the
//! topology runs in this process, records go in and come out through the `Log` trait.

use std::sync::Arc;
use std::time::Duration;

use howk_processor::delivery::client::{DeliveryClient, DeliveryConfig};
use howk_processor::lua::LuaConfig;
use howk_processor::lua::pool::EnginePool;
use howk_processor::lua::template::{TemplateResolver, process_env};
use howk_topology::builder::{Engines, RunningTopology, TopologyConfig, start};
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

/// An embedded log under `dir` with `partitions` per webhook topic, and its Kafka section.
fn open_log(dir: &std::path::Path, partitions: i32) -> (Arc<EmbeddedLog>, KafkaConfig) {
    let kafka = KafkaConfig {
        partitions,
        ..KafkaConfig::default()
    };
    let log = EmbeddedLog::open(Some(&dir.join("log")), &catalogue(&kafka)).unwrap();
    (Arc::new(log), kafka)
}

/// Starts the topology on `log`, off the reactor; `lua` gives it script engines.
async fn start_on(log: &Arc<EmbeddedLog>, config: TopologyConfig, lua: bool) -> RunningTopology {
    let pool =
        lua.then(|| EnginePool::start(LuaConfig::default().engine_settings(process_env()), 2, 64));
    let engines = Engines {
        pool,
        client: loopback_client(),
    };
    let handle = tokio::runtime::Handle::current();
    let log = Arc::clone(log);
    tokio::task::spawn_blocking(move || start(log, config, engines, handle))
        .await
        .unwrap()
        .unwrap()
}

/// Stops the topology cleanly, off the reactor.
async fn stop(running: RunningTopology) {
    tokio::task::spawn_blocking(move || running.stop())
        .await
        .unwrap()
        .unwrap();
}

/// A `pending` record: a webhook of `config_id` to `endpoint` with `payload`.
fn pending(kafka: &KafkaConfig, config_id: &str, endpoint: &str, payload: usize) -> OutRecord {
    OutRecord {
        topic: Arc::from(kafka.topics.pending.as_str()),
        partition: None,
        key: config_id.as_bytes().to_vec(),
        value: Some(format!(r#"{{"endpoint": "{endpoint}", "payload": {payload}}}"#).into_bytes()),
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
    let (log, kafka) = open_log(dir.path(), 3);
    let running = start_on(&log, topology_config(&kafka, dir.path()), true).await;

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
    stop(running).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_closed_task_aborts_its_running_attempts() {
    // Review LOW: a closed (or revoked) deliver task left its attempts running; after a
    // reassignment to the same process the old incarnation's attempt ran beside the new one's
    // for the same endpoint. Now closing the task aborts them: the old request is dropped.
    let sink = WebhookSink::start().await;
    sink.plan("slow", [Reply::status(200).after(Duration::from_secs(20))]);
    let dir = tempfile::tempdir().unwrap();
    let (log, kafka) = open_log(dir.path(), 1);
    let mut config = topology_config(&kafka, dir.path());
    config.processing.shutdown_grace = Duration::from_millis(100);
    let running = start_on(&log, config.clone(), false).await;
    log.produce(vec![pending(&kafka, "slow:1", &sink.url("slow"), 1)])
        .unwrap();
    wait_for("the attempt in flight", Duration::from_secs(30), || async {
        (sink.in_flight("slow").0 == 1).then_some(())
    })
    .await;
    stop(running).await;
    // The task closed with its attempt unfinished: the attempt is aborted, its request dropped.
    wait_for(
        "the old request to be dropped",
        Duration::from_secs(10),
        || async { (sink.in_flight("slow").0 == 0).then_some(()) },
    )
    .await;

    // The same process takes the partition again: the webhook is redone, alone.
    let running = start_on(&log, config, false).await;
    wait_for("the redone attempt", Duration::from_secs(30), || async {
        (sink.received("slow").len() == 2).then_some(())
    })
    .await;
    assert_eq!(sink.in_flight("slow").1, 1, "two attempts ran at once");
    stop(running).await;
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
    let (log, kafka) = open_log(dir.path(), 1);
    let mut config = topology_config(&kafka, dir.path());
    config.processing.shutdown_grace = Duration::from_millis(100);
    config.delivery.max_in_flight = 20;
    let running = start_on(&log, config, false).await;
    let mut records: Vec<OutRecord> = (0..40)
        .map(|n| pending(&kafka, "hole:1", &sink.url("hole"), n))
        .collect();
    records.push(pending(&kafka, "fast:1", &sink.url("fast"), 40));
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
    stop(running).await;
}
