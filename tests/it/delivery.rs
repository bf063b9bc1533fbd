//! The topology end to end on the real broker: `howk run` as a child process delivering to a
//! real HTTP receiver on loopback, outputs read back read_committed.

use std::collections::HashMap;
use std::time::Duration;

use crate::helpers::howk::{Howk, count_outcome};
use crate::helpers::sink::{Reply, WebhookSink};
use crate::helpers::wait_for;

fn webhook(endpoint: &str, payload: &str) -> Vec<u8> {
    format!(r#"{{"endpoint": "{endpoint}", "payload": {payload}}}"#).into_bytes()
}

/// `(config_id, webhook JSON)` records for `pending`, and per endpoint the bodies in order.
pub type Workload = (Vec<(String, Vec<u8>)>, HashMap<String, Vec<String>>);

/// The happy-path workload: 20 configs × 5 endpoints × 10 webhooks, payloads with JSON bytes a
/// re-encoder would change (spacing, `1.50`, a 30-digit integer). Returns the records for
/// `pending` and, per endpoint, the bodies in the order enqueued.
pub fn happy_path_workload(sink: &WebhookSink) -> Workload {
    let mut webhooks = Vec::new();
    let mut expected: HashMap<String, Vec<String>> = HashMap::new();
    for seq in 0..10 {
        for config in 0..20 {
            for endpoint in 0..5 {
                let payload = format!(
                    r#"{{"config": {config},  "seq": {seq}, "price": 1.50, "big": 123456789012345678901234567890}}"#
                );
                let config_id = format!("tenant{config}:{endpoint}");
                webhooks.push((
                    config_id,
                    webhook(&sink.url(&format!("e{endpoint}")), &payload),
                ));
                expected
                    .entry(format!("e{endpoint}"))
                    .or_default()
                    .push(payload);
            }
        }
    }
    (webhooks, expected)
}

/// Every webhook delivered once, in order per (config, endpoint), bodies byte-exact, default
/// headers present, one `accepted` and one `delivered` result each.
pub fn assert_happy_path(
    sink: &WebhookSink,
    expected: &HashMap<String, Vec<String>>,
    results: &[serde_json::Value],
) {
    assert_eq!(sink.total(), 1000, "each webhook delivered exactly once");
    let outcome = |name: &str| {
        results
            .iter()
            .filter(|r| r["outcome"] == name)
            .collect::<Vec<_>>()
    };
    let delivered = outcome("delivered");
    assert_eq!(delivered.len(), 1000);
    let mut ids: Vec<&str> = delivered
        .iter()
        .map(|r| r["webhook_id"].as_str().unwrap())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 1000, "one delivered result per webhook");
    assert_eq!(outcome("accepted").len(), 1000);

    for endpoint in 0..5 {
        let name = format!("e{endpoint}");
        let received = sink.received(&name);
        let mut bodies: Vec<String> = received
            .iter()
            .map(|r| String::from_utf8(r.body.clone()).unwrap())
            .collect();
        // Per (config, endpoint), in the order accepted.
        for config in 0..20 {
            let marker = format!(r#"{{"config": {config},  "#);
            let got: Vec<&String> = bodies.iter().filter(|b| b.starts_with(&marker)).collect();
            let want: Vec<&String> = expected[&name]
                .iter()
                .filter(|b| b.starts_with(&marker))
                .collect();
            assert_eq!(got, want, "order and bytes for config {config} at {name}");
        }
        let mut want = expected[&name].clone();
        want.sort();
        bodies.sort();
        assert_eq!(bodies, want, "bodies byte-exact at {name}");
        let first = &received[0];
        assert!(first.header("x-webhook-id").unwrap().starts_with("wh_"));
        assert_eq!(first.header("x-webhook-attempt"), Some("1"));
        assert_eq!(first.header("content-type"), Some("application/json"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn thousand_webhooks_are_delivered_once_in_order_with_exact_bodies() {
    let sink = WebhookSink::start().await;
    let mut howk = Howk::new(&[]).await;
    howk.start();
    let (webhooks, expected) = happy_path_workload(&sink);
    howk.enqueue(&webhooks).await;

    let mut results = howk.tail("results");
    results.until(
        "1000 delivered results",
        Duration::from_secs(90),
        |records| count_outcome(records, "delivered") >= 1000,
    );
    assert_happy_path(&sink, &expected, &results.json());
    howk.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_endpoint_is_retried_with_the_original_payload_until_it_answers() {
    let sink = WebhookSink::start().await;
    sink.plan(
        "flaky",
        [Reply::status(500), Reply::status(500), Reply::status(200)],
    );
    let mut howk = Howk::new(&[]).await;
    // The script sees previous_error and the original payload on every attempt.
    howk.put_script(
        "retry:1",
        r#"
        local seen = previous_error and (previous_error.status_code .. "@" .. previous_error.attempt) or "none"
        request.headers["X-Previous"] = seen
        request.body = payload .. "|" .. metadata.attempt
        "#,
    )
    .await;
    howk.start();
    howk.enqueue(&[("retry:1".into(), webhook(&sink.url("flaky"), r#"{"v":1}"#))])
        .await;

    let mut results = howk.tail("results");
    results.until("a delivered result", Duration::from_secs(60), |records| {
        count_outcome(records, "delivered") > 0
    });
    let received = sink.received("flaky");
    assert_eq!(received.len(), 3);
    let attempts: Vec<&str> = received
        .iter()
        .map(|r| r.header("x-webhook-attempt").unwrap())
        .collect();
    assert_eq!(attempts, ["1", "2", "3"]);
    let previous: Vec<&str> = received
        .iter()
        .map(|r| r.header("x-previous").unwrap())
        .collect();
    assert_eq!(previous, ["none", "500@0", "500@1"]);
    let bodies: Vec<String> = received
        .iter()
        .map(|r| String::from_utf8(r.body.clone()).unwrap())
        .collect();
    assert_eq!(bodies, [r#"{"v":1}|0"#, r#"{"v":1}|1"#, r#"{"v":1}|2"#]);
    assert_eq!(results.with("outcome", "retry_scheduled").len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn retry_after_is_honoured() {
    let sink = WebhookSink::start().await;
    sink.plan(
        "later",
        [Reply {
            retry_after_secs: Some(2),
            ..Reply::status(503)
        }],
    );
    let mut howk = Howk::new(&[]).await;
    howk.start();
    howk.enqueue(&[("ra".into(), webhook(&sink.url("later"), "{}"))])
        .await;
    let mut results = howk.tail("results");
    results.until("a delivered result", Duration::from_secs(60), |records| {
        count_outcome(records, "delivered") > 0
    });
    let scheduled = &results.with("outcome", "retry_scheduled")[0];
    let failed_at =
        chrono::DateTime::parse_from_rfc3339(scheduled["timestamp"].as_str().unwrap()).unwrap();
    let next =
        chrono::DateTime::parse_from_rfc3339(scheduled["next_retry_at"].as_str().unwrap()).unwrap();
    let delay = (next - failed_at).num_milliseconds();
    assert!(
        (2000..2100).contains(&delay),
        "Retry-After 2 s honoured over 200 ms backoff: {delay} ms"
    );
    let delivered = &results.with("outcome", "delivered")[0];
    let delivered_at =
        chrono::DateTime::parse_from_rfc3339(delivered["timestamp"].as_str().unwrap()).unwrap();
    assert!((delivered_at - failed_at).num_milliseconds() >= 2000);
}

#[tokio::test(flavor = "multi_thread")]
async fn terminal_failures_are_dead_lettered_with_their_reason() {
    let sink = WebhookSink::start().await;
    sink.plan("bad", [Reply::status(400)]);
    sink.plan("gone", [Reply::status(410)]);
    sink.plan("down", std::iter::repeat_n(Reply::status(500), 3));
    let mut howk = Howk::new(&[]).await;
    howk.start();
    let exhausted = format!(
        r#"{{"endpoint": "{}", "payload": {{}}, "max_attempts": 3, "headers": {{"Authorization": "Bearer s3cret", "X-Plain": "1"}}, "signing_secret": "shh"}}"#,
        sink.url("down")
    );
    howk.enqueue(&[
        ("dl:1".into(), webhook(&sink.url("bad"), "{}")),
        ("dl:2".into(), webhook(&sink.url("gone"), "{}")),
        ("dl:3".into(), exhausted.into_bytes()),
    ])
    .await;

    let mut letters = howk.tail("deadletter");
    letters.until("3 dead letters", Duration::from_secs(60), |r| r.len() >= 3);
    let letters = letters.json();
    let by_reason = |reason: &str| {
        letters
            .iter()
            .find(|l| l["reason_type"] == reason)
            .unwrap_or_else(|| panic!("no {reason} letter in {letters:?}"))
            .clone()
    };
    assert_eq!(by_reason("unrecoverable")["status_code"], 400);
    assert_eq!(by_reason("gone")["status_code"], 410);
    let exhausted = by_reason("exhausted");
    assert_eq!(exhausted["attempts"], 3);
    assert_eq!(
        exhausted["webhook"]["headers"]["Authorization"],
        "[REDACTED]"
    );
    assert_eq!(exhausted["webhook"]["headers"]["X-Plain"], "1");
    assert!(exhausted["webhook"].get("signing_secret").is_none());
    assert_eq!(sink.received("down").len(), 3);
    assert_eq!(sink.received("bad").len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_redis_makes_kv_scripts_retry_then_exhaust_never_drop() {
    let sink = WebhookSink::start().await;
    // Nothing listens on port 1: every kv call fails as a transient module failure.
    let mut howk = Howk::new(&[("HOWK_REDIS_ADDR", "127.0.0.1:1")]).await;
    howk.put_script(
        "kvdown",
        r#"
        local token, err = kv.get("token")
        if err then error("kv unavailable: " .. err) end
        request.headers["X-Token"] = token or "none"
        "#,
    )
    .await;
    howk.start();
    let value = format!(
        r#"{{"endpoint": "{}", "payload": {{}}, "max_attempts": 2}}"#,
        sink.url("kv")
    );
    howk.enqueue(&[("kvdown".into(), value.into_bytes())]).await;
    let mut letters = howk.tail("deadletter");
    letters.until("a dead letter", Duration::from_secs(60), |r| !r.is_empty());
    let letter = &letters.json()[0];
    assert_eq!(letter["reason_type"], "exhausted", "{letter}");
    assert_eq!(letter["attempts"], 2);
    assert!(
        letter["last_error"].as_str().unwrap().contains("kv"),
        "{letter}"
    );
    assert_eq!(sink.total(), 0, "nothing sent without the script's output");
    let mut results = howk.tail("results");
    results.until("the retry result", Duration::from_secs(10), |records| {
        records
            .iter()
            .any(|(_, v)| String::from_utf8_lossy(v).contains("retry_scheduled"))
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn endpoints_on_private_addresses_are_refused_unless_allowed() {
    let sink = WebhookSink::start().await;
    // No allowed ranges: loopback is refused, by IP literal and by name.
    let mut howk = Howk::new(&[("HOWK_DELIVERY_ALLOWED_CIDRS", "")]).await;
    howk.start();
    let by_name = sink.url("ssrf").replace("127.0.0.1", "localhost");
    howk.enqueue(&[
        ("ssrf:1".into(), webhook(&sink.url("ssrf"), "{}")),
        ("ssrf:2".into(), webhook(&by_name, "{}")),
        (
            "ssrf:3".into(),
            webhook("http://169.254.169.254/latest/meta-data", "{}"),
        ),
    ])
    .await;
    let mut letters = howk.tail("deadletter");
    letters.until("3 dead letters", Duration::from_secs(60), |r| r.len() >= 3);
    for letter in letters.json() {
        assert_eq!(letter["reason_type"], "unrecoverable", "{letter}");
        let reason = letter["reason"].as_str().unwrap();
        assert!(
            reason.contains("127.0.0.1")
                || reason.contains("::1")
                || reason.contains("169.254.169.254"),
            "the reason names the address: {reason}"
        );
    }
    assert_eq!(sink.total(), 0, "nothing reached the private address");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_open_circuit_holds_webhooks_without_calls_or_spent_attempts() {
    let sink = WebhookSink::start().await;
    sink.plan("breaker", [Reply::status(500), Reply::status(500)]);
    let mut howk = Howk::new(&[
        ("HOWK_CIRCUIT_BREAKER_FAILURE_THRESHOLD", "2"),
        ("HOWK_CIRCUIT_BREAKER_RECOVERY_TIMEOUT", "1s"),
        ("HOWK_CIRCUIT_BREAKER_SUCCESS_THRESHOLD", "1"),
    ])
    .await;
    howk.start();
    let value = format!(
        r#"{{"endpoint": "{}", "payload": {{}}, "max_attempts": 2}}"#,
        sink.url("breaker")
    );
    let webhooks: Vec<(String, Vec<u8>)> = (0..4)
        .map(|n| (format!("cb:{n}"), value.clone().into_bytes()))
        .collect();
    howk.enqueue(&webhooks).await;

    let mut results = howk.tail("results");
    results.until("4 delivered", Duration::from_secs(60), |records| {
        count_outcome(records, "delivered") == 4
    });
    assert!(
        !results.with("outcome", "circuit_open").is_empty(),
        "the two failures opened the circuit and held the retries"
    );
    // Two failures and four successes reached the endpoint; held attempts made no call and,
    // with max_attempts 2, a held retry that spent an attempt would have been dead-lettered.
    assert_eq!(sink.received("breaker").len(), 6);
    assert!(howk.tail_is_empty("deadletter"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_probe_interrupted_by_a_restart_does_not_blackhole_the_endpoint() {
    // Review H1: a half-open circuit with its probe in flight was stored and changelogged as
    // such; the next incarnation restored "probe in flight" forever and held the endpoint's
    // webhooks for good (a circuit_open result every second, never delivered).
    let sink = WebhookSink::start().await;
    // The first attempt fails (opens the circuit); the probe hangs past the shutdown.
    sink.plan(
        "flaky",
        [
            Reply::status(500),
            Reply::status(200).after(Duration::from_secs(30)),
        ],
    );
    // A slow delivery to another endpoint that starts before the probe and ends while it
    // hangs: its completion commits the task's store writes, the probe state among them.
    sink.plan("slow", [Reply::status(200).after(Duration::from_secs(4))]);
    let mut howk = Howk::new(&[
        ("HOWK_KAFKA_PARTITIONS", "1"),
        ("HOWK_CIRCUIT_BREAKER_FAILURE_THRESHOLD", "1"),
        ("HOWK_CIRCUIT_BREAKER_RECOVERY_TIMEOUT", "2s"),
        ("HOWK_CIRCUIT_BREAKER_SUCCESS_THRESHOLD", "1"),
        ("HOWK_PROCESSING_SHUTDOWN_GRACE", "100ms"),
    ])
    .await;
    howk.start();
    howk.enqueue(&[("cb:1".into(), webhook(&sink.url("flaky"), "{}"))])
        .await;
    wait_for("the first attempt", Duration::from_secs(60), || async {
        (!sink.received("flaky").is_empty()).then_some(())
    })
    .await;
    howk.enqueue(&[("cb:2".into(), webhook(&sink.url("slow"), "{}"))])
        .await;
    wait_for(
        "the probe to reach the endpoint",
        Duration::from_secs(30),
        || async { (sink.received("flaky").len() == 2).then_some(()) },
    )
    .await;
    let mut results = howk.tail("results");
    results.until(
        "the slow endpoint delivered",
        Duration::from_secs(30),
        |records| count_outcome(records, "delivered") == 1,
    );
    assert_eq!(
        sink.received("flaky").len(),
        2,
        "the probe still hangs while the slow delivery commits"
    );
    howk.stop();

    howk.start();
    results.until(
        "the first webhook delivered after the restart",
        Duration::from_secs(30),
        |records| count_outcome(records, "delivered") == 2,
    );
    assert_eq!(sink.received("flaky").len(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_store_ahead_of_its_changelog_is_not_kept_at_a_clean_stop() {
    // Review H5(b): a completion applies its circuit change to the store at once, while its
    // changelog record waits behind an unfinished earlier attempt. A clean stop then marked
    // the store clean, and the next start kept a circuit state the changelog never had.
    let sink = WebhookSink::start().await;
    sink.plan("hangs", [Reply::status(200).after(Duration::from_secs(30))]);
    sink.plan("fails", [Reply::status(500)]);
    let mut howk = Howk::new(&[
        ("HOWK_KAFKA_PARTITIONS", "1"),
        ("HOWK_CIRCUIT_BREAKER_FAILURE_THRESHOLD", "1"),
        ("HOWK_CIRCUIT_BREAKER_RECOVERY_TIMEOUT", "10m"),
        ("HOWK_PROCESSING_SHUTDOWN_GRACE", "100ms"),
    ])
    .await;
    howk.start();
    howk.enqueue(&[("h5:1".into(), webhook(&sink.url("hangs"), "{}"))])
        .await;
    wait_for("the hanging attempt", Duration::from_secs(60), || async {
        (!sink.received("hangs").is_empty()).then_some(())
    })
    .await;
    // Its failure opens the endpoint's circuit in the store; the changelog record of that
    // waits behind the hanging attempt, which is never finished.
    howk.enqueue(&[("h5:2".into(), webhook(&sink.url("fails"), "{}"))])
        .await;
    wait_for("the failing attempt", Duration::from_secs(30), || async {
        (!sink.received("fails").is_empty()).then_some(())
    })
    .await;
    howk.stop();

    // Its offset was not committed, so the attempt is redone. Rebuilt from the changelog, the
    // circuit is closed and the endpoint is called again at once; a store kept ahead of its
    // changelog would hold the webhook for the 10-minute recovery timeout.
    howk.start();
    wait_for("the redone attempt", Duration::from_secs(30), || async {
        (sink.received("fails").len() >= 2).then_some(())
    })
    .await;
}
