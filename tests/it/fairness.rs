//! Fair delivery against the real broker (SPEC §5, review H3): a black-holed endpoint never
//! holds back the fast ones on its partition, the per-domain limit and the rate limit hold at
//! the receiver, ordered configs deliver in strict FIFO through failures, and webhooks that wait
//! in a deliver task's store survive a SIGKILL.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::helpers::howk::{Howk, Tail, count_outcome};
use crate::helpers::sink::{Reply, WebhookSink};
use crate::helpers::wait_for;

fn webhook(endpoint: &str, n: usize) -> Vec<u8> {
    format!(r#"{{"endpoint": "{endpoint}", "payload": {{"n": {n}}}}}"#).into_bytes()
}

/// `count` webhooks of `config_id` to `endpoint`, with payloads `{"n": 0..count}`.
fn series(config_id: &str, endpoint: &str, count: usize) -> Vec<(String, Vec<u8>)> {
    (0..count)
        .map(|n| (config_id.to_owned(), webhook(endpoint, n)))
        .collect()
}

/// The results topic once it holds `count` delivered results (within `deadline`).
fn delivered(howk: &Howk, count: usize, deadline: Duration) -> Tail {
    let mut results = howk.tail("results");
    results.until(&format!("{count} delivered"), deadline, |records| {
        count_outcome(records, "delivered") >= count
    });
    results
}

/// Puts a pass-through script for `config_id` whose `script_config` sets its delivery policy;
/// the policy applies from when the scripts table has it.
async fn put_policy(howk: &Howk, config_id: &str, script_config: serde_json::Value) {
    howk.put_script_ready(config_id, "-- delivery policy only", Some(script_config))
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_black_holed_endpoint_never_holds_back_the_fast_ones_on_its_partition() {
    let sink = WebhookSink::start().await;
    // Never answers (within the 30 s timeout).
    sink.plan(
        "hole",
        std::iter::repeat_n(Reply::status(200).after(Duration::from_secs(3600)), 100),
    );
    // One partition: every webhook shares it with the black hole.
    let mut howk = Howk::new(&[
        ("HOWK_KAFKA_PARTITIONS", "1"),
        ("HOWK_DELIVERY_TIMEOUT", "30s"),
    ])
    .await;
    howk.start_ready().await;
    let hole = series("fair:hole", &sink.url("hole"), 100);
    howk.enqueue(&hole).await;
    wait_for(
        "the black hole's first request",
        Duration::from_secs(30),
        || async { (sink.received("hole").len() == 1).then_some(()) },
    )
    .await;

    let fast: Vec<(String, Vec<u8>)> = (0..200)
        .map(|n| {
            let endpoint = sink.url(&format!("fast{}", n % 10));
            (format!("fair:fast{}", n % 4), webhook(&endpoint, n))
        })
        .collect();
    let enqueued = Instant::now();
    howk.enqueue(&fast).await;
    // Delivered and recorded: the results (committed, read_committed) are behind the black
    // hole's records in the partition, so they only appear once those stop holding the offset.
    let results = delivered(&howk, 200, Duration::from_secs(5));
    let took = enqueued.elapsed();
    let fast_received: usize = (0..10)
        .map(|e| sink.received(&format!("fast{e}")).len())
        .sum();
    assert_eq!(fast_received, 200, "after {took:?}");
    // The black hole got one request at a time: its webhooks wait their turn (in the store),
    // none was dropped or answered.
    assert_eq!(sink.in_flight("hole").1, 1);
    assert_eq!(count_outcome(&results.records, "dead_lettered"), 0);
    howk.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_per_domain_limit_holds_at_the_receiver() {
    let sink = WebhookSink::start().await;
    for path in 0..8 {
        sink.plan(
            &format!("d{path}"),
            std::iter::repeat_n(Reply::status(200).after(Duration::from_millis(300)), 3),
        );
    }
    let mut howk = Howk::new(&[("HOWK_DELIVERY_MAX_PER_DOMAIN", "3")]).await;
    howk.start_ready().await;
    // Eight endpoints (paths) on one host, three webhooks each: without the limit, eight
    // requests would be in flight at once.
    let webhooks: Vec<(String, Vec<u8>)> = (0..24)
        .map(|n| {
            let endpoint = sink.url(&format!("d{}", n % 8));
            (format!("domain:{}", n % 3), webhook(&endpoint, n))
        })
        .collect();
    howk.enqueue(&webhooks).await;
    delivered(&howk, 24, Duration::from_secs(60));
    let (_, most) = sink.all_in_flight();
    assert_eq!(most, 3, "the most requests at once to the host");
    howk.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_rate_limit_spaces_requests_to_an_endpoint() {
    let sink = WebhookSink::start().await;
    // Globally 20/s; the config below halves it for itself.
    let mut howk = Howk::new(&[("HOWK_DELIVERY_RATE_LIMIT", "20")]).await;
    howk.start_ready().await;
    put_policy(
        &howk,
        "rate:b",
        serde_json::json!({"_delivery_rate_limit": 10}),
    )
    .await;
    let webhooks = series("rate:a", &sink.url("paced"), 41);
    howk.enqueue(&webhooks).await;
    delivered(&howk, 41, Duration::from_secs(60));
    let received = sink.received("paced");
    assert_eq!(received.len(), 41);
    let span = received[40].at - received[0].at;
    let rate = 40.0 / span.as_secs_f64();
    assert!(
        (18.0..=22.0).contains(&rate),
        "{rate:.1} requests/s over {span:?} (limit 20/s)"
    );

    let webhooks = series("rate:b", &sink.url("paced-b"), 21);
    howk.enqueue(&webhooks).await;
    wait_for(
        "21 requests to paced-b",
        Duration::from_secs(60),
        || async { (sink.received("paced-b").len() >= 21).then_some(()) },
    )
    .await;
    let received = sink.received("paced-b");
    let span = received[20].at - received[0].at;
    let rate = 20.0 / span.as_secs_f64();
    assert!(
        (9.0..=11.0).contains(&rate),
        "{rate:.1} requests/s over {span:?} (the config's limit 10/s)"
    );
    howk.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_ordered_config_delivers_in_strict_fifo_through_failures() {
    let sink = WebhookSink::start().await;
    // The first webhook of each endpoint fails twice, then is delivered.
    for path in ["fifo", "loose"] {
        sink.plan(
            path,
            [Reply::status(500), Reply::status(500), Reply::status(200)],
        );
    }
    let mut howk = Howk::new(&[]).await;
    howk.start_ready().await;
    // Ordered by its script_config; "loose:a" keeps the default (unordered).
    put_policy(
        &howk,
        "fifo:a",
        serde_json::json!({"_delivery_ordered": true}),
    )
    .await;
    let mut webhooks = series("fifo:a", &sink.url("fifo"), 5);
    webhooks.extend(series("loose:a", &sink.url("loose"), 5));
    howk.enqueue(&webhooks).await;
    let results = delivered(&howk, 10, Duration::from_secs(60));
    // Strict FIFO: nothing behind the failing webhook went first.
    assert_eq!(sink.arrivals("fifo"), [0, 0, 0, 1, 2, 3, 4]);
    // Unordered: the ones behind it went on while it waited for its retries.
    let loose = sink.arrivals("loose");
    assert_eq!(loose.len(), 7);
    assert_eq!(loose[..2], [0, 1], "{loose:?}");
    assert_eq!(count_outcome(&results.records, "retry_scheduled"), 4);
    howk.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn webhooks_waiting_in_the_deliver_store_survive_a_kill() {
    let sink = WebhookSink::start().await;
    // The first request hangs, so the other nine wait behind it and move to the store.
    sink.plan(
        "stuck",
        [Reply::status(200).after(Duration::from_secs(3600))],
    );
    let mut howk = Howk::new(&[
        ("HOWK_KAFKA_PARTITIONS", "1"),
        ("HOWK_DELIVERY_TIMEOUT", "60s"),
    ])
    .await;
    howk.start_ready().await;
    let webhooks = series("store:a", &sink.url("stuck"), 10);
    howk.enqueue(&webhooks).await;
    // Committed puts of the ten jobs in the deliver store's changelog: the transaction that
    // moved the partition's offset past them.
    let mut changelog = crate::helpers::howk::Tail::new(
        &howk.brokers,
        &format!("{}-circuit-changelog", howk.prefix),
    );
    changelog.until(
        "ten webhooks in the deliver store",
        Duration::from_secs(30),
        |records| {
            records
                .iter()
                .filter(|(key, value)| key.starts_with("\0job\0") && !value.is_empty())
                .count()
                >= 10
        },
    );
    howk.kill();
    howk.start();

    let results = delivered(&howk, 10, Duration::from_secs(60));
    let mut delivered: HashMap<String, usize> = HashMap::new();
    for record in results.json() {
        if record["outcome"] == "delivered" {
            *delivered
                .entry(record["webhook_id"].as_str().unwrap().to_owned())
                .or_default() += 1;
        }
    }
    assert_eq!(delivered.len(), 10);
    assert!(delivered.values().all(|&n| n == 1), "{delivered:?}");
    let mut seen = sink.arrivals("stuck");
    seen.dedup();
    assert_eq!(
        seen,
        (0..10).collect::<Vec<u64>>(),
        "first attempts in order"
    );
    howk.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stuck_endpoint_overflows_to_the_retry_topic_without_spending_attempts() {
    let sink = WebhookSink::start().await;
    // The first request takes 6 s; the rest are answered at once.
    sink.plan("jam", [Reply::status(200).after(Duration::from_secs(6))]);
    let mut howk = Howk::new(&[
        ("HOWK_KAFKA_PARTITIONS", "1"),
        ("HOWK_DELIVERY_MAX_PER_ENDPOINT", "3"),
        ("HOWK_DELIVERY_OVERFLOW_DELAY", "1s"),
        // Longer than the first request takes: it is delivered, not retried.
        ("HOWK_DELIVERY_TIMEOUT", "30s"),
    ])
    .await;
    howk.start_ready().await;
    howk.enqueue(&series("jam:a", &sink.url("jam"), 1)).await;
    // The head has waited past spill_after and moved to the store: the pair counts as stuck.
    let mut changelog = Tail::new(&howk.brokers, &format!("{}-circuit-changelog", howk.prefix));
    changelog.until(
        "the head in the deliver store",
        Duration::from_secs(30),
        |records| {
            records
                .iter()
                .any(|(key, value)| key.starts_with("\0job\0") && !value.is_empty())
        },
    );
    let behind: Vec<(String, Vec<u8>)> = (1..=10)
        .map(|n| ("jam:a".to_owned(), webhook(&sink.url("jam"), n)))
        .collect();
    howk.enqueue(&behind).await;

    // The queue holds three (the head and two behind it); the other eight go round howk.retry.
    let mut retry = howk.tail("retry");
    retry.until(
        "eight webhooks overflowed",
        Duration::from_secs(30),
        |records| {
            records
                .iter()
                .map(|(key, _)| key)
                .collect::<std::collections::HashSet<_>>()
                .len()
                >= 8
        },
    );
    let results = delivered(&howk, 11, Duration::from_secs(60));
    retry.poll(Duration::from_secs(1));
    assert_eq!(retry.per_key().len(), 8, "webhooks that overflowed");
    // No attempt spent and nothing written for an overflow: each webhook has its accepted
    // result and one delivered result, of its first attempt (0-based in results).
    let records = results.json();
    let delivered: Vec<_> = records
        .iter()
        .filter(|r| r["outcome"] == "delivered")
        .collect();
    assert_eq!(delivered.len(), 11);
    assert!(delivered.iter().all(|r| r["attempt"] == 0), "{delivered:?}");
    assert!(
        records
            .iter()
            .all(|r| r["outcome"] == "delivered" || r["outcome"] == "accepted"),
        "{records:?}"
    );
    let mut seen = sink.arrivals("jam");
    seen.sort_unstable();
    assert_eq!(seen, (0..=10).collect::<Vec<u64>>(), "each delivered once");
    howk.stop();
}
