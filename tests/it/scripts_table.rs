//! The scripts table joined at delivery: updates reach later webhooks, a `script_hash` fence
//! waits (bounded) for its version, and a deleted script dead-letters pinned webhooks.

use std::time::Duration;

use crate::helpers::howk::Howk;
use crate::helpers::sink::WebhookSink;

fn pinned(endpoint: &str, hash: &str, n: u32) -> Vec<u8> {
    format!(r#"{{"endpoint": "{endpoint}", "payload": {{"n": {n}}}, "script_hash": "{hash}"}}"#)
        .into_bytes()
}

const V1: &str = r#"request.headers["X-Version"] = "1""#;
const V2: &str = r#"request.headers["X-Version"] = "2""#;
const V3: &str = r#"request.headers["X-Version"] = "3""#;

#[tokio::test(flavor = "multi_thread")]
async fn script_updates_reach_later_webhooks_and_fences_wait_for_their_version() {
    let sink = WebhookSink::start().await;
    let mut howk = Howk::new(&[("HOWK_SCRIPTS_FENCE_TIMEOUT", "20s")]).await;
    let v1 = howk.put_script("shop", V1).await;
    howk.start();
    // `shop:eu` has no script of its own: the namespace's runs.
    howk.enqueue(&[("shop:eu".into(), pinned(&sink.url("s"), &v1, 1))])
        .await;
    crate::helpers::wait_for("v1 delivery", Duration::from_secs(60), || async {
        (sink.received("s").len() == 1).then_some(())
    })
    .await;

    let v2 = howk.put_script("shop", V2).await;
    howk.enqueue(&[("shop:eu".into(), pinned(&sink.url("s"), &v2, 2))])
        .await;
    crate::helpers::wait_for("v2 delivery", Duration::from_secs(30), || async {
        (sink.received("s").len() == 2).then_some(())
    })
    .await;

    // A webhook pinned to a version not written yet waits for it.
    let v3 = howk_processor::lua::script::script_hash(V3);
    howk.enqueue(&[("shop:eu".into(), pinned(&sink.url("s"), &v3, 3))])
        .await;
    let mut results = howk.tail("results");
    results.until(
        "the pinned webhook accepted",
        Duration::from_secs(30),
        |_| true,
    );
    results.until("3 accepted", Duration::from_secs(30), |records| {
        records
            .iter()
            .filter(|(_, v)| String::from_utf8_lossy(v).contains(r#""outcome":"accepted""#))
            .count()
            == 3
    });
    assert_eq!(sink.received("s").len(), 2, "the fenced webhook waits");
    howk.put_script("shop", V3).await;
    crate::helpers::wait_for("v3 delivery", Duration::from_secs(30), || async {
        (sink.received("s").len() == 3).then_some(())
    })
    .await;
    let versions: Vec<String> = sink
        .received("s")
        .iter()
        .map(|r| r.header("x-version").unwrap().to_owned())
        .collect();
    assert_eq!(versions, ["1", "2", "3"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_and_deleted_scripts_dead_letter_script_not_found() {
    let sink = WebhookSink::start().await;
    let mut howk = Howk::new(&[("HOWK_SCRIPTS_FENCE_TIMEOUT", "1s")]).await;
    let hash = howk.put_script("gone", V1).await;
    howk.produce("scripts", "gone", None).await;
    howk.start();
    let never = howk_processor::lua::script::script_hash("-- never written");
    howk.enqueue(&[
        ("gone".into(), pinned(&sink.url("x"), &hash, 1)),
        ("nobody".into(), pinned(&sink.url("x"), &never, 2)),
    ])
    .await;
    let mut letters = howk.tail("deadletter");
    letters.until("2 dead letters", Duration::from_secs(60), |r| r.len() >= 2);
    let letters = letters.json();
    assert!(
        letters
            .iter()
            .all(|l| l["reason_type"] == "script_not_found"),
        "{letters:?}"
    );
    let reasons: Vec<&str> = letters
        .iter()
        .map(|l| l["reason"].as_str().unwrap())
        .collect();
    assert!(
        reasons.iter().any(|r| r.contains("was deleted")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("did not reach")),
        "{reasons:?}"
    );
    assert_eq!(sink.total(), 0, "nothing raw was sent");
}
