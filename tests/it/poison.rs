//! Poison records on `howk.pending` go to the dead letter topic with their raw bytes and a
//! reason, and the records behind them in the same partition are still delivered.

use std::time::Duration;

use crate::helpers::howk::Howk;
use crate::helpers::sink::WebhookSink;

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
