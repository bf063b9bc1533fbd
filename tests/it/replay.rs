//! Replay jobs on the real broker: dead letters re-driven after the receiver is fixed are
//! delivered once each with the same id, a valid signature and byte-identical bodies; a job
//! killed mid-way resumes without enqueueing anything twice.

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine as _;
use howk_processor::delivery::sign::verify_standard;

use crate::helpers::howk::{Howk, Tail, count_outcome};
use crate::helpers::sink::{Reply, WebhookSink};
use crate::helpers::wait_for;

/// A Standard Webhooks HMAC key: the re-driven webhooks must still be signed with it.
fn secret() -> String {
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode([7u8; 24])
    )
}

/// `count` webhooks of `config_id` to `path`, signed, with payloads whose exact bytes a
/// re-encoder would change.
fn signed_series(
    sink: &WebhookSink,
    config_id: &str,
    path: &str,
    count: usize,
) -> Vec<(String, Vec<u8>)> {
    (0..count)
        .map(|n| {
            let value = format!(
                r#"{{"endpoint": "{}", "payload": {{"n": {n},  "price": 1.50, "big": 123456789012345678901234567890}}, "signing_secret": "{}"}}"#,
                sink.url(path),
                secret()
            );
            (config_id.to_owned(), value.into_bytes())
        })
        .collect()
}

/// The payload text of webhook `n` as enqueued.
fn payload_text(n: usize) -> String {
    format!(r#"{{"n": {n},  "price": 1.50, "big": 123456789012345678901234567890}}"#)
}

/// Waits for `count` dead letters.
fn dead_letters(howk: &Howk, count: usize) -> Tail {
    let mut letters = howk.tail("deadletter");
    letters.until(
        &format!("{count} dead letters"),
        Duration::from_secs(60),
        |records| records.len() >= count,
    );
    letters
}

/// Runs `howk replay ARGS` to its end; its stdout.
async fn replay(howk: &Howk, args: &[&str]) -> String {
    let mut command = howk.command(&[&["replay"], args].concat());
    let output = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "howk replay {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Delivered requests to `path` by webhook id (the 200s after the fix).
fn delivered_by_id(
    sink: &WebhookSink,
    path: &str,
) -> HashMap<String, Vec<crate::helpers::sink::Received>> {
    let mut by_id: HashMap<String, Vec<_>> = HashMap::new();
    for received in sink.received(path) {
        let id = received.header("x-webhook-id").unwrap().to_owned();
        by_id.entry(id).or_default().push(received);
    }
    by_id
}

#[tokio::test(flavor = "multi_thread")]
async fn dead_letters_are_redriven_once_each_with_their_id_signature_and_bytes() {
    let sink = WebhookSink::start().await;
    // 400 is final: each webhook is dead-lettered at its first attempt.
    sink.plan("fixme", std::iter::repeat_n(Reply::status(400), 20));
    let mut howk = Howk::new(&[]).await;
    howk.start_ready().await;
    howk.enqueue(&signed_series(&sink, "redrive:a", "fixme", 20))
        .await;
    // Another tenant's dead letter, which the filter leaves alone.
    sink.plan("other", [Reply::status(400)]);
    howk.enqueue(&signed_series(&sink, "other:a", "other", 1))
        .await;
    let letters = dead_letters(&howk, 21);
    assert!(
        letters
            .json()
            .iter()
            .all(|l| l["origin"]["offset"].is_i64()),
        "letters carry their origin"
    );
    let original_ids: Vec<String> = sink
        .received("fixme")
        .iter()
        .map(|r| r.header("x-webhook-id").unwrap().to_owned())
        .collect();
    assert_eq!(original_ids.len(), 20);

    // The receiver is fixed (its plan is used up: 200 from now on); re-drive one tenant.
    let summary = replay(&howk, &["deadletter", "--config-id", "redrive:a"]).await;
    assert!(summary.contains("state      Done"), "{summary}");
    assert!(
        summary.contains(&format!("matched    {:>10}", 20)),
        "{summary}"
    );
    assert!(
        summary.contains(&format!("enqueued   {:>10}", 20)),
        "{summary}"
    );

    wait_for(
        "20 re-driven deliveries",
        Duration::from_secs(60),
        || async { (sink.received("fixme").len() >= 40).then_some(()) },
    )
    .await;
    let mut results = howk.tail("results");
    results.until("20 delivered", Duration::from_secs(30), |records| {
        count_outcome(records, "delivered") >= 20
    });
    let by_id = delivered_by_id(&sink, "fixme");
    for id in &original_ids {
        let requests = &by_id[id];
        assert_eq!(
            requests.len(),
            2,
            "{id}: the failed attempt and the re-drive"
        );
        let redriven = &requests[1];
        assert_eq!(
            redriven.header("x-webhook-attempt"),
            Some("1"),
            "attempts from the first"
        );
        let n: usize = serde_json::from_slice::<serde_json::Value>(&redriven.body).unwrap()["n"]
            .as_u64()
            .unwrap() as usize;
        assert_eq!(
            redriven.body,
            payload_text(n).as_bytes(),
            "byte-identical body"
        );
        verify_standard(
            &secret(),
            redriven.header("webhook-id").unwrap(),
            redriven.header("webhook-timestamp").unwrap(),
            &redriven.body,
            redriven.header("webhook-signature").unwrap(),
        )
        .unwrap_or_else(|e| panic!("{id}: {e}"));
    }
    assert_eq!(
        sink.received("other").len(),
        1,
        "the filter left the other tenant alone"
    );
    assert_eq!(count_outcome(&results.records, "delivered"), 20);
    // The status follows the re-drive.
    let url = howk.api(&format!("/webhooks/{}/status", original_ids[0]));
    wait_for(
        "the status to follow the re-drive",
        Duration::from_secs(30),
        || async {
            let text = reqwest::get(&url).await.ok()?.text().await.ok()?;
            let status: serde_json::Value = serde_json::from_str(&text).ok()?;
            (status["state"] == "delivered").then_some(())
        },
    )
    .await;
    howk.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_replay_resumes_without_enqueueing_anything_twice() {
    let sink = WebhookSink::start().await;
    sink.plan("later", std::iter::repeat_n(Reply::status(400), 60));
    let mut howk = Howk::new(&[]).await;
    howk.start_ready().await;
    howk.enqueue(&signed_series(&sink, "resume:a", "later", 60))
        .await;
    dead_letters(&howk, 60);

    // Slow batches, so the kill lands mid-way.
    let mut child = howk
        .command(&["replay", "deadletter", "--batch", "10", "--max-rate", "20"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut replays = howk.tail("replays");
    replays.until(
        "two committed batches",
        Duration::from_secs(60),
        |records| {
            records.iter().any(|(_, value)| {
                serde_json::from_slice::<serde_json::Value>(value)
                    .is_ok_and(|p| p["enqueued"].as_u64().unwrap_or(0) >= 20)
            })
        },
    );
    child.kill().unwrap();
    child.wait().unwrap();
    let job_id = replays.records.last().unwrap().0.clone();
    let progress: serde_json::Value =
        serde_json::from_slice(&replays.records.last().unwrap().1).unwrap();
    assert_eq!(progress["state"], "running", "killed mid-way: {progress}");
    assert!(progress["enqueued"].as_u64().unwrap() < 60, "{progress}");

    let summary = replay(&howk, &["resume", &job_id, "--max-rate", "0"]).await;
    assert!(summary.contains("state      Done"), "{summary}");
    assert!(
        summary.contains(&format!("enqueued   {:>10}", 60)),
        "{summary}"
    );

    // Each webhook was enqueued again exactly once (generation 1), and delivered once.
    let mut pending = howk.tail("pending");
    pending.until("60 re-driven records", Duration::from_secs(30), |records| {
        records
            .iter()
            .filter(|(_, v)| String::from_utf8_lossy(v).contains(r#""replay_generation":1"#))
            .count()
            >= 60
    });
    pending.poll(Duration::from_secs(1));
    let mut per_id: HashMap<String, usize> = HashMap::new();
    for record in pending.json() {
        if record["replay_generation"] == 1 {
            *per_id
                .entry(record["id"].as_str().unwrap().to_owned())
                .or_default() += 1;
        }
    }
    assert_eq!(per_id.len(), 60);
    assert!(per_id.values().all(|&n| n == 1), "{per_id:?}");
    wait_for(
        "60 re-driven deliveries",
        Duration::from_secs(60),
        || async { (sink.received("later").len() >= 120).then_some(()) },
    )
    .await;
    let by_id = delivered_by_id(&sink, "later");
    assert_eq!(by_id.len(), 60);
    assert!(by_id.values().all(|requests| requests.len() == 2));
    howk.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dry_run_reports_each_webhooks_diff_and_sends_nothing() {
    let sink = WebhookSink::start().await;
    let mut howk = Howk::new(&[]).await;
    howk.start_ready().await;
    howk.put_script_ready("dry:a", r#"request.headers["X-V"] = "1""#, None)
        .await;
    let webhooks: Vec<(String, Vec<u8>)> = (0..10)
        .map(|n| {
            let value = format!(
                r#"{{"endpoint": "{}", "payload": {{"n": {n}}}}}"#,
                sink.url("dry")
            );
            ("dry:a".to_owned(), value.into_bytes())
        })
        .chain(std::iter::once((
            "other:a".to_owned(),
            format!(
                r#"{{"endpoint": "{}", "payload": {{"n": 99}}}}"#,
                sink.url("dry-other")
            )
            .into_bytes(),
        )))
        .collect();
    howk.enqueue(&webhooks).await;
    wait_for("11 deliveries", Duration::from_secs(60), || async {
        (sink.total() >= 11).then_some(())
    })
    .await;

    let dir = tempfile::tempdir().unwrap();
    let candidate = dir.path().join("candidate.lua");
    std::fs::write(
        &candidate,
        r#"local body = json.decode(payload)
           if body.n == 3 then error("n 3 is not for me") end
           request.headers["X-V"] = "2"
           if body.n == 5 then request.headers["X-V"] = "1" end"#,
    )
    .unwrap();
    let out = dir.path().join("records.jsonl");
    let summary = replay(
        &howk,
        &[
            "dry-run",
            "--candidate",
            candidate.to_str().unwrap(),
            "--config-id",
            "dry:a",
            "--out",
            out.to_str().unwrap(),
            "--json",
        ],
    )
    .await;
    let report: serde_json::Value = serde_json::from_str(&summary).unwrap();
    assert_eq!(report["selected"], 10, "{report}");
    assert_eq!(
        report["unchanged"], 1,
        "n 5 sets what the current script sets"
    );
    assert_eq!(report["changed"], 8);
    assert_eq!(report["errored"], 1);
    assert_eq!(report["error_types"]["candidate:script_runtime_error"], 1);
    let sample = report["samples"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["verdict"] == "changed")
        .unwrap();
    assert_eq!(
        sample["headers_changed"][0],
        serde_json::json!(["x-v", "1", "2"])
    );
    let lines = std::fs::read_to_string(&out).unwrap();
    assert_eq!(lines.lines().count(), 10, "one line per webhook");
    // Nothing was sent: the receiver still has the eleven original deliveries.
    assert_eq!(sink.total(), 11);
    howk.stop();
}

const ADMIN: &str = "replay-admin";

async fn admin(
    method: reqwest::Method,
    url: &str,
    body: Option<serde_json::Value>,
) -> (reqwest::StatusCode, serde_json::Value) {
    let mut request = reqwest::Client::new()
        .request(method, url)
        .bearer_auth(ADMIN);
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
    )
}

/// Polls a job until its state is `state`; its last document.
async fn job_until(howk: &Howk, job_id: &str, state: &str) -> serde_json::Value {
    let url = howk.api(&format!("/admin/replays/{job_id}"));
    wait_for(
        &format!("job {job_id} {state}"),
        Duration::from_secs(90),
        || async {
            let (status, job) = admin(reqwest::Method::GET, &url, None).await;
            (status == reqwest::StatusCode::OK && job["state"] == state).then_some(job)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_replays_redrive_dry_run_and_survive_a_restart() {
    let sink = WebhookSink::start().await;
    sink.plan("rest", std::iter::repeat_n(Reply::status(400), 40));
    let mut howk = Howk::new(&[("HOWK_API_ADMIN_TOKEN", ADMIN)]).await;
    howk.start_ready().await;
    howk.enqueue(&signed_series(&sink, "rest:a", "rest", 40))
        .await;
    dead_letters(&howk, 40);
    let jobs = howk.api("/admin/replays");

    // The admin token guards the routes.
    let response = reqwest::Client::new()
        .post(&jobs)
        .header("content-type", "application/json")
        .body(r#"{"kind": "redrive"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::UNAUTHORIZED);
    let (status, _) = admin(
        reqwest::Method::POST,
        &jobs,
        Some(serde_json::json!({"kind": "redrive", "filter": {"since": "yesterday"}})),
    )
    .await;
    assert_eq!(status, reqwest::StatusCode::BAD_REQUEST);

    // A dry run over the 40 accepted webhooks: a candidate that adds a header changes each.
    let (status, started) = admin(
        reqwest::Method::POST,
        &jobs,
        Some(serde_json::json!({
            "kind": "dry_run", "lua_code": "request.headers['X-New'] = '1'",
            "source": {"config_ids": ["rest:a"]},
        })),
    )
    .await;
    assert_eq!(status, reqwest::StatusCode::ACCEPTED, "{started}");
    let done = job_until(&howk, started["job_id"].as_str().unwrap(), "done").await;
    assert_eq!(done["report"]["selected"], 40, "{done}");
    assert_eq!(done["report"]["changed"], 40, "{done}");
    // Its report is on howk.replays, which the CLI shows whole.
    let dry_run_id = started["job_id"].as_str().unwrap();
    wait_for(
        "the report on howk.replays",
        Duration::from_secs(30),
        || async {
            let shown = replay(&howk, &["status", dry_run_id]).await;
            shown.contains(r#""changed": 40"#).then_some(())
        },
    )
    .await;

    // A slow re-drive, killed with its instance mid-way: the restarted instance resumes it.
    let (status, started) = admin(
        reqwest::Method::POST,
        &jobs,
        Some(serde_json::json!({
            "kind": "redrive", "filter": {"config_ids": ["rest:a"]}, "max_rate": 10, "batch": 5,
        })),
    )
    .await;
    assert_eq!(status, reqwest::StatusCode::ACCEPTED, "{started}");
    let job_id = started["job_id"].as_str().unwrap().to_owned();
    let url = howk.api(&format!("/admin/replays/{job_id}"));
    let before_kill = wait_for(
        "a first committed batch",
        Duration::from_secs(60),
        || async {
            let (_, job) = admin(reqwest::Method::GET, &url, None).await;
            (job["enqueued"].as_u64().unwrap_or(0) > 0).then_some(job)
        },
    )
    .await;
    howk.kill();
    assert_eq!(
        before_kill["state"], "running",
        "killed mid-way: {before_kill}"
    );
    assert!(
        before_kill["enqueued"].as_u64().unwrap() < 40,
        "{before_kill}"
    );
    howk.start_ready().await;
    let done = job_until(&howk, &job_id, "done").await;
    assert_eq!(done["enqueued"], 40, "{done}");
    let (status, _) = admin(reqwest::Method::DELETE, &url, None).await;
    assert_eq!(
        status,
        reqwest::StatusCode::NOT_FOUND,
        "a finished job is not running"
    );

    // Each webhook re-driven once: delivered once after the failed attempt.
    wait_for(
        "40 re-driven deliveries",
        Duration::from_secs(60),
        || async { (sink.received("rest").len() >= 80).then_some(()) },
    )
    .await;
    let mut pending = howk.tail("pending");
    pending.poll(Duration::from_secs(2));
    let redriven = pending
        .json()
        .iter()
        .filter(|r| r["replay_generation"] == 1)
        .count();
    assert_eq!(redriven, 40);
    // The instance was killed while delivering, so a request may have gone out twice (HTTP is
    // at-least-once across a crash); the results record one delivery per webhook.
    assert!(
        delivered_by_id(&sink, "rest")
            .values()
            .all(|r| r.len() >= 2)
    );
    let mut results = howk.tail("results");
    results.until("40 delivered", Duration::from_secs(30), |records| {
        count_outcome(records, "delivered") >= 40
    });
    results.poll(Duration::from_secs(1));
    let mut delivered: HashMap<String, usize> = HashMap::new();
    for result in results.json() {
        if result["outcome"] == "delivered" {
            *delivered
                .entry(result["webhook_id"].as_str().unwrap().to_owned())
                .or_default() += 1;
        }
    }
    assert_eq!(delivered.len(), 40);
    assert!(delivered.values().all(|&n| n == 1), "{delivered:?}");
    howk.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_time_range_reprocess_as_of_runs_the_script_version_of_the_time() {
    let sink = WebhookSink::start().await;
    let mut howk = Howk::new(&[]).await;
    howk.start_ready().await;
    let url = howk.api("/config/asof:a/script");
    let put_and_wait = |code: &'static str| {
        let (howk, url) = (&howk, url.clone());
        async move {
            howk.put_script("asof:a", code).await;
            wait_for(
                "the version in the table",
                Duration::from_secs(30),
                || async {
                    let text = reqwest::get(&url).await.ok()?.text().await.ok()?;
                    text.contains(&code.replace('"', "\\\"")).then_some(())
                },
            )
            .await;
        }
    };
    let series = |from: usize, to: usize| -> Vec<(String, Vec<u8>)> {
        (from..to)
            .map(|n| {
                let value = format!(
                    r#"{{"endpoint": "{}", "payload": {{"n": {n}}}}}"#,
                    sink.url("asof")
                );
                ("asof:a".to_owned(), value.into_bytes())
            })
            .collect()
    };
    put_and_wait(r#"request.headers["X-V"] = "1""#).await;
    howk.enqueue(&series(0, 3)).await;
    wait_for(
        "3 deliveries with version 1",
        Duration::from_secs(60),
        || async { (sink.received("asof").len() >= 3).then_some(()) },
    )
    .await;
    let between = chrono::Utc::now();
    // Record times are in milliseconds: the next records must be stamped after `between`.
    while chrono::Utc::now() < between + chrono::Duration::milliseconds(2) {
        tokio::task::yield_now().await;
    }
    put_and_wait(r#"request.headers["X-V"] = "2""#).await;
    howk.enqueue(&series(3, 5)).await;
    wait_for(
        "2 deliveries with version 2",
        Duration::from_secs(60),
        || async { (sink.received("asof").len() >= 5).then_some(()) },
    )
    .await;
    let received = sink.received("asof");
    let versions: Vec<&str> = received.iter().map(|r| r.header("x-v").unwrap()).collect();
    assert_eq!(versions, ["1", "1", "1", "2", "2"]);

    // The webhooks written before `between`, again, with the script of their time.
    let until = between.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let summary = replay(
        &howk,
        &[
            "pending",
            "--config-id",
            "asof:a",
            "--until",
            &until,
            "--script",
            "as-of",
        ],
    )
    .await;
    assert!(
        summary.contains(&format!("enqueued   {:>10}", 3)),
        "{summary}"
    );
    wait_for(
        "3 reprocessed deliveries",
        Duration::from_secs(60),
        || async { (sink.received("asof").len() >= 8).then_some(()) },
    )
    .await;
    let received = sink.received("asof");
    let first_ids: Vec<&str> = received[..3]
        .iter()
        .map(|r| r.header("x-webhook-id").unwrap())
        .collect();
    for again in &received[5..] {
        assert_eq!(
            again.header("x-v"),
            Some("1"),
            "the version of its time, not the latest"
        );
        assert!(first_ids.contains(&again.header("x-webhook-id").unwrap()));
    }
    howk.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn keyed_webhooks_are_redriven_and_lost_originals_are_skipped_or_sent_from_the_copy() {
    let sink = WebhookSink::start().await;
    sink.plan("keyed", [Reply::status(400)]);
    let mut howk = Howk::new(&[]).await;
    howk.start_ready().await;
    let keyed = format!(
        r#"{{"endpoint": "{}", "payload": {{"k": 1}}, "idempotency_key": "order-1", "signing_secret": "{}"}}"#,
        sink.url("keyed"),
        secret()
    );
    howk.enqueue(&[("keyed:a".to_owned(), keyed.into_bytes())])
        .await;
    dead_letters(&howk, 1);
    // A dead letter whose original is gone from retention (an offset the topic never had).
    let lost = serde_json::json!({
        "webhook": {"id": "wh_lost", "config_id": "lost:a", "endpoint": sink.url("lost"),
            "payload": {"n": 1}, "headers": {"Authorization": "[REDACTED]", "X-Keep": "1"},
            "max_attempts": 3, "attempt": 2},
        "reason_type": "exhausted", "reason": "HTTP 503", "attempts": 3,
        "time": "2026-12-02T00:00:00Z",
        "origin": {"topic": howk.topic("pending"), "partition": 0, "offset": 10_000_000},
    });
    howk.produce("deadletter", "wh_lost", Some(lost.to_string().as_bytes()))
        .await;
    dead_letters(&howk, 2);

    let summary = replay(
        &howk,
        &[
            "deadletter",
            "--config-id",
            "keyed:a",
            "--config-id",
            "lost:a",
        ],
    )
    .await;
    assert!(
        summary.contains(&format!("matched    {:>10}", 2)),
        "{summary}"
    );
    assert!(
        summary.contains(&format!("enqueued   {:>10}", 1)),
        "{summary}"
    );
    assert!(
        summary.contains(&format!("skipped    {:>10}", 1)),
        "{summary}"
    );
    assert!(
        summary.contains("wh_lost") && summary.contains("gone from retention"),
        "{summary}"
    );
    // Its idempotency key does not make the re-drive a duplicate.
    wait_for(
        "the keyed webhook again",
        Duration::from_secs(60),
        || async { (sink.received("keyed").len() >= 2).then_some(()) },
    )
    .await;
    let mut results = howk.tail("results");
    results.until("its delivery", Duration::from_secs(30), |records| {
        count_outcome(records, "delivered") >= 1
    });
    assert_eq!(count_outcome(&results.records, "duplicate"), 0);

    // From the dead letter's copy: redacted headers dropped, unsigned, said so.
    let summary = replay(
        &howk,
        &["deadletter", "--id", "wh_lost", "--from-dead-letter-copy"],
    )
    .await;
    assert!(
        summary.contains(&format!("unsigned {:>10}", 1)),
        "{summary}"
    );
    wait_for("the copy delivered", Duration::from_secs(60), || async {
        (!sink.received("lost").is_empty()).then_some(())
    })
    .await;
    let request = &sink.received("lost")[0];
    assert_eq!(request.header("x-webhook-id"), Some("wh_lost"));
    assert_eq!(request.header("x-keep"), Some("1"));
    assert_eq!(request.header("authorization"), None);
    assert_eq!(request.header("x-webhook-signature"), None);
    assert_eq!(request.header("x-webhook-attempt"), Some("1"));
    howk.stop();
}
