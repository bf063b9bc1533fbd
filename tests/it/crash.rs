//! Crash safety: SIGKILL `howk run` with webhooks in flight and retries pending, start it
//! again, and every webhook still ends delivered — with no result record duplicated (read
//! committed) and the retry timers surviving the crash.

use std::collections::HashMap;
use std::time::Duration;

use crate::helpers::howk::{Howk, count_outcome};
use crate::helpers::own_broker::OwnBroker;
use crate::helpers::sink::{Reply, WebhookSink};

const WEBHOOKS: usize = 2000;

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_processor_resumes_without_losing_or_duplicating_anything() {
    let sink = WebhookSink::start().await;
    // Half the endpoints fail their first 100 calls: those webhooks wait on retry timers.
    for endpoint in 0..5 {
        sink.plan(
            &format!("flaky{endpoint}"),
            std::iter::repeat_n(Reply::status(503), 100),
        );
    }
    let mut howk = Howk::new(&[
        ("HOWK_RETRY_BASE_DELAY", "1s"),
        ("HOWK_CIRCUIT_BREAKER_FAILURE_THRESHOLD", "100000"),
    ])
    .await;
    howk.start();
    let webhooks: Vec<(String, Vec<u8>)> = (0..WEBHOOKS)
        .map(|n| {
            let path = if n % 2 == 0 { "ok" } else { "flaky" };
            let endpoint = sink.url(&format!("{path}{}", n % 5));
            let value = format!(r#"{{"endpoint": "{endpoint}", "payload": {{"n": {n}}}}}"#);
            (format!("crash:{}", n % 40), value.into_bytes())
        })
        .collect();
    howk.enqueue(&webhooks).await;

    let mut results = howk.tail("results");
    results.until(
        "retries scheduled before the kill",
        Duration::from_secs(60),
        |records| {
            records
                .iter()
                .filter(|(_, v)| String::from_utf8_lossy(v).contains("retry_scheduled"))
                .count()
                >= 100
        },
    );
    let before_kill = sink.total();
    howk.kill();
    assert!(
        before_kill < 2 * WEBHOOKS,
        "killed mid-flight ({before_kill} requests)"
    );
    howk.start();

    results.until(
        "every webhook delivered",
        Duration::from_secs(120),
        |records| {
            let mut delivered = std::collections::HashSet::new();
            for (key, value) in records {
                if String::from_utf8_lossy(value).contains(r#""outcome":"delivered""#) {
                    delivered.insert(key.clone());
                }
            }
            delivered.len() == WEBHOOKS
        },
    );
    results.poll(Duration::from_millis(500));

    let mut seen: HashMap<(String, u64, String), usize> = HashMap::new();
    for result in results.json() {
        let key = (
            result["webhook_id"].as_str().unwrap().to_owned(),
            result["attempt"].as_u64().unwrap(),
            result["outcome"].as_str().unwrap().to_owned(),
        );
        *seen.entry(key).or_default() += 1;
    }
    let duplicated: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(duplicated.is_empty(), "duplicated results: {duplicated:?}");
    let per_webhook = results.per_key();
    assert_eq!(per_webhook.len(), WEBHOOKS);
    assert!(howk.tail_is_empty("deadletter"), "nothing dead-lettered");
    howk.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_clean_restart_keeps_its_stores_and_pending_retries() {
    let sink = WebhookSink::start().await;
    sink.plan("later", [Reply::status(503)]);
    let mut howk = Howk::new(&[("HOWK_RETRY_BASE_DELAY", "3s"), ("RUST_LOG", "info")]).await;
    howk.start();
    let value = format!(
        r#"{{"endpoint": "{}", "payload": {{"kept": true}}}}"#,
        sink.url("later")
    );
    howk.enqueue(&[("clean:1".into(), value.into_bytes())])
        .await;
    let mut results = howk.tail("results");
    results.until("the retry scheduled", Duration::from_secs(30), |records| {
        records
            .iter()
            .any(|(_, v)| String::from_utf8_lossy(v).contains("retry_scheduled"))
    });

    // SIGTERM: drain, commit, checkpoint every store; the retry waits in the timer store.
    howk.stop();
    howk.start();
    results.until("the retried delivery", Duration::from_secs(60), |records| {
        count_outcome(records, "delivered") > 0
    });
    let log = howk.last_log();
    assert!(
        log.lines().any(|line| line.contains("task ready")
            && line.contains("timers")
            && line.contains("clean=true")),
        "the timer store was kept, not rebuilt:\n{log}"
    );
    assert!(!log.contains("clean=false"), "no store was rebuilt:\n{log}");
    let bodies: Vec<Vec<u8>> = sink.received("later").into_iter().map(|r| r.body).collect();
    assert_eq!(
        bodies,
        [br#"{"kept": true}"#.to_vec(), br#"{"kept": true}"#.to_vec()]
    );
    howk.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broker_restart_loses_and_duplicates_nothing() {
    let broker = OwnBroker::start();
    let address = format!("127.0.0.1:{}", broker.port);
    let sink = WebhookSink::start().await;
    let mut howk = Howk::new(&[("HOWK_KAFKA_BROKERS", &address)]).await;
    howk.brokers = address.clone();
    howk.start();
    let batch = |from: usize| -> Vec<(String, Vec<u8>)> {
        (from..from + 200)
            .map(|n| {
                let value = format!(
                    r#"{{"endpoint": "{}", "payload": {{"n": {n}}}}}"#,
                    sink.url(&format!("b{}", n % 5))
                );
                (format!("restart:{}", n % 11), value.into_bytes())
            })
            .collect()
    };
    howk.enqueue(&batch(0)).await;
    let mut results = howk.tail("results");
    results.until("the first 200", Duration::from_secs(60), |r| {
        count_outcome(r, "delivered") >= 200
    });

    // The broker goes away under a running processor and comes back.
    broker.stop();
    broker.restart();
    howk.enqueue(&batch(200)).await;
    let mut results = howk.tail("results");
    results.until("all 400 delivered", Duration::from_secs(120), |r| {
        count_outcome(r, "delivered") >= 400
    });
    results.poll(Duration::from_millis(500));
    let mut per_webhook: HashMap<String, usize> = HashMap::new();
    for result in results.json() {
        if result["outcome"] == "delivered" {
            *per_webhook
                .entry(result["webhook_id"].as_str().unwrap().to_owned())
                .or_default() += 1;
        }
    }
    assert_eq!(per_webhook.len(), 400);
    assert!(
        per_webhook.values().all(|&n| n == 1),
        "one delivered result each"
    );
    howk.stop();
}
