//! Poison records on `howk.pending` go to the dead letter topic with their raw bytes and a
//! reason, and the records behind them in the same partition are still delivered.

use std::time::Duration;

use crate::helpers::howk::{Howk, count_outcome};
use crate::helpers::sink::{Reply, WebhookSink};

#[tokio::test(flavor = "multi_thread")]
async fn poison_records_are_dead_lettered_and_the_partition_moves_on() {
    let sink = WebhookSink::start().await;
    let mut howk = Howk::new(&[]).await;
    howk.start();
    let key = "poison:1"; // one key: one partition, poison and good records interleaved
    let good = |n: u32| {
        format!(
            r#"{{"endpoint": "{}", "payload": {{"n": {n}}}}}"#,
            sink.url("after")
        )
    };
    let big = format!(
        r#"{{"endpoint": "{}", "payload": "{}"}}"#,
        sink.url("after"),
        "x".repeat(5 * 1024 * 1024)
    );
    howk.produce("pending", key, Some(good(1).as_bytes())).await;
    howk.produce("pending", key, Some(b"{not json")).await;
    howk.produce("pending", key, Some(br#"{"payload": {"a": 1}}"#))
        .await;
    howk.produce("pending", key, Some(big.as_bytes())).await;
    howk.produce("pending", key, None).await;
    howk.produce("pending", key, Some(good(2).as_bytes())).await;

    let mut letters = howk.tail("deadletter");
    letters.until("4 dead letters", Duration::from_secs(60), |r| r.len() >= 4);
    crate::helpers::wait_for("both good webhooks", Duration::from_secs(30), || async {
        (sink.received("after").len() >= 2).then_some(())
    })
    .await;
    // Dead letters are keyed by webhook id, so they spread over partitions: find by reason.
    let letters = letters.json();
    assert!(letters.iter().all(|l| l["reason_type"] == "invalid_record"));
    let letter = |needle: &str| {
        letters
            .iter()
            .find(|l| l["reason"].as_str().unwrap().contains(needle))
            .unwrap_or_else(|| panic!("no letter with {needle:?} in {letters:?}"))
    };
    assert_eq!(
        letter("not a valid webhook JSON")["webhook"]["raw"],
        "{not json"
    );
    assert_eq!(
        letter("missing endpoint")["webhook"]["raw_json"]["payload"]["a"],
        1
    );
    assert_eq!(letter("exceeds")["webhook"]["raw_bytes"], big.len());
    letter("tombstone");
    let bodies: Vec<Vec<u8>> = sink.received("after").into_iter().map(|r| r.body).collect();
    assert_eq!(bodies, [br#"{"n": 1}"#.to_vec(), br#"{"n": 2}"#.to_vec()]);
}

/// A record of about 1 MB straight onto `howk.pending` (under `processing.max_record_bytes`, over
/// librdkafka's default 1,000,000-byte producer limit): its derived delivery record must be
/// written, not crash-loop the stream thread (review C2).
#[tokio::test(flavor = "multi_thread")]
async fn a_webhook_near_the_input_limit_is_delivered_once_without_a_thread_restart() {
    let sink = WebhookSink::start().await;
    let mut howk = Howk::new(&[]).await;
    howk.start();
    let payload = format!(r#""{}""#, "y".repeat(1_020_000));
    let value = format!(
        r#"{{"endpoint": "{}", "payload": {payload}}}"#,
        sink.url("big")
    );
    assert!(value.len() > 1_000_000 && value.len() < 1024 * 1024);
    howk.produce("pending", "big:1", Some(value.as_bytes()))
        .await;

    let mut results = howk.tail("results");
    results.until("delivered", Duration::from_secs(60), |r| {
        count_outcome(r, "delivered") == 1
    });
    assert_eq!(count_outcome(&results.records, "accepted"), 1);
    let received = sink.received("big");
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].body, payload.as_bytes());
    assert!(
        !howk.last_log().contains("stream thread failed"),
        "the stream thread failed:\n{}",
        howk.last_log()
    );
}

/// Through the API: ~800 KB of `1e5` numbers to an endpoint that answers 400. The dead letter
/// used to re-serialise the payload (`1e5` → `100000.0`, 1.8 MB) and crash-loop the thread,
/// re-POSTing and committing a duplicate result each loop. Now it carries the exact bytes.
#[tokio::test(flavor = "multi_thread")]
async fn a_dead_letter_keeps_the_payload_bytes_and_fits_whatever_the_numbers() {
    let sink = WebhookSink::start().await;
    sink.plan("refuses", [Reply::status(400)]);
    let mut howk = Howk::new(&[]).await;
    howk.start_ready().await;
    let numbers = vec!["1e5"; 200_000].join(",");
    let payload = format!(r#"{{"n":[{numbers}],"b":1.50,"a":123456789012345678901234567890}}"#);
    let body = format!(
        r#"{{"endpoint": "{}", "payload": {payload}, "max_attempts": 1}}"#,
        sink.url("refuses")
    );
    let response = reqwest::Client::new()
        .post(howk.api("/webhooks/big:1/enqueue"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202, "{}", response.text().await.unwrap());

    let mut letters = howk.tail("deadletter");
    letters.until("the dead letter", Duration::from_secs(60), |r| {
        !r.is_empty()
    });
    let text = String::from_utf8(letters.records[0].1.clone()).unwrap();
    assert!(
        text.contains(&format!(r#""payload":{payload}"#)),
        "the dead letter carries the payload's exact bytes"
    );
    let letter: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(letter["reason_type"], "unrecoverable");
    let mut results = howk.tail("results");
    results.until("dead_lettered", Duration::from_secs(30), |r| {
        count_outcome(r, "dead_lettered") >= 1
    });
    // Whatever more arrives in a short while must not repeat it.
    results.poll(Duration::from_secs(2));
    assert_eq!(count_outcome(&results.records, "dead_lettered"), 1);
    assert_eq!(sink.received("refuses").len(), 1);
    assert!(!howk.last_log().contains("stream thread failed"));
}
