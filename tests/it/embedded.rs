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

/// The in-process topologies of these tests share the process-wide metrics. The happy path
/// checks that healthy endpoints leave no circuit cached (`howk_circuits_cached` is 0), so it
/// runs alone (write); tests whose endpoints fail, and so cache a circuit while they run, share
/// (read).
static CIRCUITS_METRIC: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

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
    let _alone = CIRCUITS_METRIC.write().await;
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
    // tests whose endpoints fail wait while this one runs (CIRCUITS_METRIC).
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

/// Every delivered result on `log` so far.
fn delivered_results(log: &EmbeddedLog, kafka: &KafkaConfig) -> Vec<serde_json::Value> {
    read_all(log, &kafka.topics.results)
        .into_iter()
        .filter(|r| r["outcome"] == "delivered")
        .collect()
}

/// Waits until `log` holds `count` delivered results.
async fn wait_delivered(log: &EmbeddedLog, kafka: &KafkaConfig, count: usize, deadline: Duration) {
    wait_for(&format!("{count} delivered results"), deadline, || async {
        (delivered_results(log, kafka).len() >= count).then_some(())
    })
    .await;
}

/// Requests per second between the first and the last arrival at `/hook/{path}`.
fn arrival_rate(sink: &WebhookSink, path: &str) -> f64 {
    let received = sink.received(path);
    let span = received.last().unwrap().at - received[0].at;
    (received.len() - 1) as f64 / span.as_secs_f64()
}

/// A script record for `config_id` that sets only its `script_config` (the delivery policy).
fn policy_record(
    kafka: &KafkaConfig,
    config_id: &str,
    script_config: serde_json::Value,
) -> OutRecord {
    let code = "-- delivery policy only";
    let value = serde_json::json!({
        "config_id": config_id, "lua_code": code,
        "hash": howk_processor::lua::script::script_hash(code), "version": "1",
        "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z",
        "script_config": script_config,
    });
    OutRecord {
        topic: Arc::from(kafka.topics.scripts.as_str()),
        partition: None,
        key: config_id.as_bytes().to_vec(),
        value: Some(serde_json::to_vec(&value).unwrap()),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_per_domain_limit_holds_on_the_embedded_log() {
    let sink = WebhookSink::start().await;
    for path in 0..8 {
        sink.plan(
            &format!("d{path}"),
            std::iter::repeat_n(Reply::status(200).after(Duration::from_millis(300)), 3),
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let (log, kafka) = open_log(dir.path(), 3);
    let mut config = topology_config(&kafka, dir.path());
    config.delivery.max_per_domain = 3;
    let running = start_on(&log, config, false).await;
    // Eight endpoints (paths) on one host, three webhooks each: eight pairs could run at once.
    let records = (0..24)
        .map(|n| {
            pending(
                &kafka,
                &format!("domain:{}", n % 3),
                &sink.url(&format!("d{}", n % 8)),
                n,
            )
        })
        .collect();
    log.produce(records).unwrap();
    wait_delivered(&log, &kafka, 24, Duration::from_secs(60)).await;
    assert_eq!(
        sink.all_in_flight().1,
        3,
        "the most requests at once to the host"
    );
    stop(running).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_rate_limit_holds_on_the_embedded_log_globally_and_per_config() {
    let sink = WebhookSink::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (log, kafka) = open_log(dir.path(), 3);
    let mut config = topology_config(&kafka, dir.path());
    config.delivery.rate_limit = 20.0;
    let running = start_on(&log, config, true).await;
    log.produce(vec![policy_record(
        &kafka,
        "rate:b",
        serde_json::json!({"_delivery_rate_limit": 10}),
    )])
    .unwrap();
    wait_for(
        "the policy in the scripts table",
        Duration::from_secs(30),
        || async {
            running
                .scripts
                .lookup(&howk_processor::ids::ConfigId::new("rate:b"))
                .map(|_| ())
        },
    )
    .await;
    // Two pairs at once, each paced on its own.
    let mut records: Vec<OutRecord> = (0..41)
        .map(|n| pending(&kafka, "rate:a", &sink.url("paced-a"), n))
        .collect();
    records.extend((0..21).map(|n| pending(&kafka, "rate:b", &sink.url("paced-b"), n)));
    log.produce(records).unwrap();
    wait_delivered(&log, &kafka, 62, Duration::from_secs(60)).await;
    let rate = arrival_rate(&sink, "paced-a");
    assert!(
        (18.0..=22.0).contains(&rate),
        "{rate:.1} requests/s (global limit 20/s)"
    );
    let rate = arrival_rate(&sink, "paced-b");
    assert!(
        (9.0..=11.0).contains(&rate),
        "{rate:.1} requests/s (the config's limit 10/s)"
    );
    stop(running).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_rate_limit_keeps_its_spacing_across_a_restart() {
    // The bucket is in the deliver task's store: a restarted task does not send at once what
    // the limit still holds back. Before it was kept there, the third request went out as soon
    // as the topology was back, ~0.3 s after the second instead of ≥ 2 s.
    let sink = WebhookSink::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (log, kafka) = open_log(dir.path(), 1);
    let mut config = topology_config(&kafka, dir.path());
    config.delivery.rate_limit = 0.5;
    config.processing.shutdown_grace = Duration::from_millis(100);
    let running = start_on(&log, config.clone(), false).await;
    log.produce(
        (0..3)
            .map(|n| pending(&kafka, "rate:c", &sink.url("slowly"), n))
            .collect(),
    )
    .unwrap();
    wait_delivered(&log, &kafka, 2, Duration::from_secs(30)).await;
    stop(running).await;
    let running = start_on(&log, config, false).await;
    wait_delivered(&log, &kafka, 3, Duration::from_secs(30)).await;
    let received = sink.received("slowly");
    assert_eq!(sink.arrivals("slowly"), [0, 1, 2]);
    let gap = received[2].at - received[1].at;
    assert!(
        gap >= Duration::from_millis(1900),
        "the third request {gap:?} after the second (limit 0.5/s)"
    );
    stop(running).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ordered_delivery_is_strict_fifo_on_the_embedded_log() {
    let _failing_endpoint = CIRCUITS_METRIC.read().await;
    let sink = WebhookSink::start().await;
    // The first webhook fails twice, then is delivered: 500, 500, 200.
    sink.plan(
        "fifo",
        [Reply::status(500), Reply::status(500), Reply::status(200)],
    );
    let dir = tempfile::tempdir().unwrap();
    let (log, kafka) = open_log(dir.path(), 3);
    let mut config = topology_config(&kafka, dir.path());
    config.delivery.ordered = true;
    config.retry.base_delay = Duration::from_millis(500);
    config.retry.jitter = 0.0;
    let running = start_on(&log, config, false).await;
    log.produce(
        (0..5)
            .map(|n| pending(&kafka, "fifo:a", &sink.url("fifo"), n))
            .collect(),
    )
    .unwrap();
    wait_delivered(&log, &kafka, 5, Duration::from_secs(60)).await;
    // Nothing behind the failing webhook went first.
    assert_eq!(sink.arrivals("fifo"), [0, 0, 0, 1, 2, 3, 4]);
    let retries = read_all(&log, &kafka.topics.results)
        .into_iter()
        .filter(|r| r["outcome"] == "retry_scheduled")
        .count();
    assert_eq!(retries, 2);
    stop(running).await;
}
