//! The REST API (SPEC §3) served by `howk run`, on the real broker: each route's success and
//! documented errors, records on the topics with the SPEC fields, and the OpenAPI document.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::howk::Howk;
use crate::helpers::own_broker::OwnBroker;
use crate::helpers::sink::{Reply, WebhookSink};
use crate::helpers::wait_for;

const TOKEN: &str = "t0p-secret";

async fn call(
    method: reqwest::Method,
    url: &str,
    body: Option<&str>,
    token: Option<&str>,
) -> (StatusCode, Value) {
    let mut request = reqwest::Client::new().request(method, url);
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_owned());
    }
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("request");
    let status = response.status();
    let text = response.text().await.unwrap();
    let value = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}"))
    };
    (status, value)
}

/// Sends only the head of a request declaring `length` body bytes; returns the raw answer.
async fn declared_size_request(port: u16, method: &str, path: &str, length: usize) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

async fn post(url: &str, body: &str) -> (StatusCode, Value) {
    call(reqwest::Method::POST, url, Some(body), None).await
}

#[tokio::test(flavor = "multi_thread")]
async fn enqueue_validates_stamps_and_writes_the_spec_record() {
    let sink = WebhookSink::start().await;
    let mut howk = Howk::new(&[("HOWK_API_ADMIN_TOKEN", TOKEN)]).await;
    howk.start_ready().await;

    // A script PUT needs the token, and is then stamped on enqueued webhooks.
    let script_url = howk.api("/config/shop/script");
    let put = |token| {
        call(
            reqwest::Method::PUT,
            &script_url,
            Some(r#"{"lua_code": "request.headers['X-S'] = 'yes'", "script_config": {"k": 1}}"#),
            token,
        )
    };
    assert_eq!(put(None).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(put(Some("wrong")).await.0, StatusCode::UNAUTHORIZED);
    let (status, saved) = put(Some(TOKEN)).await;
    assert_eq!(status, StatusCode::OK, "{saved}");
    let hash = saved["hash"].as_str().unwrap().to_owned();
    assert_eq!(saved["version"], "1");

    let body = format!(
        r#"{{"endpoint": "{}", "payload": {{"price": 1.50, "id": 123456789012345678901}}, "headers": {{"X-A": "1"}}}}"#,
        sink.url("api")
    );
    let (status, answer) = post(&howk.api("/webhooks/shop:eu/enqueue"), &body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    assert_eq!(answer["status"], "pending");
    let id = answer["webhook_id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("wh_"));

    let mut pending = howk.tail("pending");
    pending.until("the enqueued record", Duration::from_secs(20), |r| {
        !r.is_empty()
    });
    let (key, value) = &pending.records[0];
    assert_eq!(key, "shop:eu");
    let text = String::from_utf8(value.clone()).unwrap();
    assert!(
        text.contains(r#""payload":{"price": 1.50, "id": 123456789012345678901}"#),
        "payload bytes kept: {text}"
    );
    let record: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(record["id"], id.as_str());
    assert_eq!(record["config_id"], "shop:eu");
    assert_eq!(record["endpoint"], sink.url("api"));
    assert_eq!(
        record["script_hash"],
        hash.as_str(),
        "namespace script stamped"
    );
    assert_eq!(record["headers"]["X-A"], "1");

    // Delivered through the namespace's script; status follows.
    wait_for("the delivery", Duration::from_secs(60), || async {
        (sink.received("api").len() == 1).then_some(())
    })
    .await;
    assert_eq!(sink.received("api")[0].header("x-s"), Some("yes"));
    let status_url = howk.api(&format!("/webhooks/{id}/status"));
    let delivered = wait_for("status delivered", Duration::from_secs(60), || {
        let url = status_url.clone();
        async move {
            let (status, body) = call(reqwest::Method::GET, &url, None, None).await;
            (status == StatusCode::OK && body["state"] == "delivered").then_some(body)
        }
    })
    .await;
    assert_eq!(delivered["attempts"], 1);
    assert_eq!(delivered["last_status_code"], 200);
    let (status, _) = call(
        reqwest::Method::GET,
        &howk.api("/webhooks/wh_nope/status"),
        None,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Idempotent re-enqueue: the same id at once.
    let keyed = format!(
        r#"{{"endpoint": "{}", "payload": 1, "idempotency_key": "order-7"}}"#,
        sink.url("api")
    );
    let first = post(&howk.api("/webhooks/shop:eu/enqueue"), &keyed).await;
    let second = post(&howk.api("/webhooks/shop:eu/enqueue"), &keyed).await;
    assert_eq!(first.0, StatusCode::ACCEPTED);
    assert_eq!(first.1["webhook_id"], second.1["webhook_id"]);

    // GET serves the script; the test route runs it; DELETE removes it.
    let (status, script) = call(
        reqwest::Method::GET,
        &howk.api("/config/shop/script"),
        None,
        Some(TOKEN),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(script["hash"], hash.as_str());
    assert_eq!(script["script_config"]["k"], 1);
    let (status, report) = call(
        reqwest::Method::POST,
        &howk.api("/config/shop/script/test"),
        Some(r#"{"lua_code": "request.body = 'not json'", "payload": {"a": 1}}"#),
        Some(TOKEN),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(report["success"], true);
    assert_eq!(report["transformed_payload_base64"], "bm90IGpzb24=");
    let (status, report) = call(
        reqwest::Method::POST,
        &howk.api("/config/shop/script/test"),
        Some(r#"{"lua_code": "while true do end", "payload": {}}"#),
        Some(TOKEN),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(report["error_type"], "script_timeout");
    // PUT keeps created_at and the omitted script_config.
    let (_, again) = call(
        reqwest::Method::PUT,
        &howk.api("/config/shop/script"),
        Some(r#"{"lua_code": "x = 2"}"#),
        Some(TOKEN),
    )
    .await;
    assert_eq!(again["created_at"], saved["created_at"]);
    assert_eq!(again["version"], "2");
    let (_, script) = call(
        reqwest::Method::GET,
        &howk.api("/config/shop/script"),
        None,
        Some(TOKEN),
    )
    .await;
    assert_eq!(script["script_config"]["k"], 1);
    let (status, _) = call(
        reqwest::Method::DELETE,
        &howk.api("/config/shop/script"),
        None,
        Some(TOKEN),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = call(
        reqwest::Method::GET,
        &howk.api("/config/shop/script"),
        None,
        Some(TOKEN),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let mut scripts = howk.tail("scripts");
    scripts.until(
        "put, put, delete on howk.scripts",
        Duration::from_secs(20),
        |r| r.len() >= 3,
    );
    assert!(scripts.records.last().unwrap().1.is_empty(), "a tombstone");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_documented_error_is_json_with_its_status() {
    let mut howk = Howk::new(&[]).await;
    howk.start_ready().await;
    let enqueue = howk.api("/webhooks/acme/enqueue");

    let (status, body) = post(&enqueue, r#"{"payload": {}}"#).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"].as_str().unwrap().contains("missing endpoint"),
        "{body}"
    );
    let (status, _) = post(&enqueue, r#"{"endpoint": "ftp://x", "payload": 1}"#).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = post(&enqueue, "not json").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = post(
        &enqueue,
        r#"{"endpoint": "http://e.com", "payload": 1, "max_attempts": 0}"#,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // A signing key that cannot sign is refused when enqueued, not at the first attempt.
    let (status, body) = post(
        &enqueue,
        r#"{"endpoint": "http://e.com", "payload": 1, "signing_secret": "whsk_AAAA"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let error = body["error"].as_str().unwrap();
    assert!(error.contains("32 or 64 bytes"), "{body}");
    assert!(!error.contains("AAAA"), "the key is not echoed: {body}");
    let (status, body) = post(
        &enqueue,
        r#"{"endpoint": "http://e.com", "payload": 1, "require_script": true}"#,
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");

    // 413 on every route, from the declared size, before the body is read.
    for (method, path) in [
        ("POST", "/webhooks/acme/enqueue"),
        ("GET", "/stats"),
        ("PUT", "/config/a/script"),
    ] {
        let answer = declared_size_request(howk.api_port, method, path, 2 << 20).await;
        assert!(
            answer.starts_with("HTTP/1.1 413"),
            "{method} {path}: {answer}"
        );
        assert!(answer.contains(r#"{"error":"#), "{answer}");
    }

    let (status, body) = call(reqwest::Method::GET, &howk.api("/nowhere"), None, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["error"].is_string());
    let (status, body) = call(reqwest::Method::DELETE, &howk.api("/stats"), None, None).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(body["error"].is_string());

    let (status, body) = call(
        reqwest::Method::PUT,
        &howk.api("/config/acme/script"),
        Some(r#"{"lua_code": "if then"}"#),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "Lua syntax error");
    assert!(body["details"].is_string());

    // A batch with one bad item: 400 naming it, nothing enqueued.
    let batch = howk.api("/webhooks/acme/enqueue/batch");
    let (status, body) = post(
        &batch,
        r#"{"webhooks": [{"endpoint": "http://e.com/1", "payload": "batch-item"}, {"payload": 2}]}"#,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["index"], 1);
    let (status, _) = post(&batch, r#"{"webhooks": []}"#).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, body) = post(
        &batch,
        r#"{"webhooks": [{"endpoint": "http://e.com/1", "payload": "sentinel-1"}, {"endpoint": "http://e.com/2", "payload": "sentinel-2"}]}"#,
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["accepted"], 2);
    assert_eq!(body["failed"], 0);
    // Same key, same partition: had the bad batch been written, it would precede the sentinels.
    let mut pending = howk.tail("pending");
    pending.until("the sentinels", Duration::from_secs(20), |r| r.len() >= 2);
    let texts: Vec<String> = pending
        .records
        .iter()
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        .collect();
    assert!(texts.iter().all(|t| !t.contains("batch-item")), "{texts:?}");
    assert_eq!(texts.len(), 2);

    let (status, stats) = call(reqwest::Method::GET, &howk.api("/stats"), None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(stats["last_1h"]["enqueued"].is_u64());
    assert!(stats["last_24h"]["unique_endpoints"].is_u64());
    let metrics = reqwest::get(howk.api("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for metric in [
        "howk_api_requests_total",
        "howk_consumer_lag_records",
        "howk_accepted_total",
        "howk_attempt_seconds_bucket",
        "howk_restored_records_total",
        "howk_script_threads_abandoned 0",
        "howk_script_threads_stuck 0",
        "howk_script_pool_degraded 0",
        "howk_scripts_quarantined 0",
    ] {
        assert!(metrics.contains(metric), "{metric} in {metrics}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_openapi_document_describes_every_route() {
    let mut howk = Howk::new(&[]).await;
    howk.start_ready().await;
    let (status, doc) = call(reqwest::Method::GET, &howk.api("/openapi.json"), None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for (path, method) in [
        ("/webhooks/{config_id}/enqueue", "post"),
        ("/webhooks/{config_id}/enqueue/batch", "post"),
        ("/webhooks/{webhook_id}/status", "get"),
        ("/config/{config_id}/script", "put"),
        ("/config/{config_id}/script", "get"),
        ("/config/{config_id}/script", "delete"),
        ("/config/{config_id}/script/test", "post"),
        ("/stats", "get"),
        ("/health", "get"),
        ("/ready", "get"),
        ("/metrics", "get"),
    ] {
        assert!(
            doc["paths"][path][method].is_object(),
            "{method} {path} documented"
        );
    }
    assert_eq!(
        doc["components"]["securitySchemes"]["admin_token"]["scheme"],
        json!("bearer")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_broker_answers_503_and_accepts_nothing() {
    let broker = OwnBroker::start();
    let address = format!("127.0.0.1:{}", broker.port);
    let mut howk = Howk::new(&[
        ("HOWK_KAFKA_BROKERS", &address),
        ("HOWK_KAFKA_REQUEST_TIMEOUT", "3s"),
    ])
    .await;
    howk.start_ready().await;
    let enqueue = howk.api("/webhooks/acme/enqueue");
    let webhook = r#"{"endpoint": "http://e.com/h", "payload": {}}"#;
    assert_eq!(post(&enqueue, webhook).await.0, StatusCode::ACCEPTED);

    broker.stop();
    let (status, body) = post(&enqueue, webhook).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("nothing was accepted")
    );
    let batch = format!(r#"{{"webhooks": [{webhook}, {webhook}]}}"#);
    let (status, _) = post(&howk.api("/webhooks/acme/enqueue/batch"), &batch).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let (status, ready) = call(reqwest::Method::GET, &howk.api("/ready"), None, None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_ne!(ready["checks"]["log"], "ok");
    // Liveness is not readiness: the process still serves.
    let (status, _) = call(reqwest::Method::GET, &howk.api("/health"), None, None).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread")]
async fn howk_run_refuses_to_serve_open_script_routes() {
    let howk = Howk::new(&[("HOWK_API_ALLOW_UNAUTHENTICATED_ADMIN", "false")]).await;
    let output = tokio::task::spawn_blocking(move || howk.command(&["run"]).output().unwrap())
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("api.admin_token") && stderr.contains("allow_unauthenticated_admin"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ingress_tokens_scope_enqueue_and_status_to_namespaces() {
    let sink = WebhookSink::start().await;
    let tokens = r#"{"tok-shop": ["shop"], "tok-music": ["music"], "tok-all": ["*"]}"#;
    let mut howk = Howk::new(&[
        ("HOWK_API_ADMIN_TOKEN", TOKEN),
        ("HOWK_API_INGRESS_TOKENS", tokens),
    ])
    .await;
    howk.start_ready().await;
    let body = format!(r#"{{"endpoint": "{}", "payload": 1}}"#, sink.url("t"));
    let enqueue = |config: &str, token: Option<&'static str>| {
        let (url, body) = (
            howk.api(&format!("/webhooks/{config}/enqueue")),
            body.clone(),
        );
        async move { call(reqwest::Method::POST, &url, Some(&body), token).await }
    };
    assert_eq!(enqueue("shop:1", None).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(
        enqueue("shop:1", Some("nope")).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        enqueue("shop:1", Some("tok-music")).await.0,
        StatusCode::FORBIDDEN
    );
    let batch = format!(r#"{{"webhooks": [{body}]}}"#);
    let (status, _) = call(
        reqwest::Method::POST,
        &howk.api("/webhooks/shop:1/enqueue/batch"),
        Some(&batch),
        Some("tok-music"),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, answer) = enqueue("shop:1", Some("tok-shop")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    let id = answer["webhook_id"].as_str().unwrap().to_owned();
    assert_eq!(
        enqueue("music", Some("tok-all")).await.0,
        StatusCode::ACCEPTED
    );
    assert_eq!(enqueue("music", Some(TOKEN)).await.0, StatusCode::ACCEPTED);

    // Status: the owner's token sees it; another namespace's token gets 404; none gets 401.
    let status_url = howk.api(&format!("/webhooks/{id}/status"));
    let seen = wait_for(
        "status with the owner's token",
        Duration::from_secs(60),
        || {
            let url = status_url.clone();
            async move {
                let (status, body) = call(reqwest::Method::GET, &url, None, Some("tok-shop")).await;
                (status == StatusCode::OK && body["state"] == "delivered").then_some(body)
            }
        },
    )
    .await;
    assert_eq!(seen["config_id"], "shop:1");
    let get = |token| call(reqwest::Method::GET, &status_url, None, token);
    assert_eq!(get(Some("tok-music")).await.0, StatusCode::NOT_FOUND);
    assert_eq!(get(None).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(get(Some("tok-all")).await.0, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_caller_chosen_id_cannot_overwrite_another_configs_status() {
    let sink = WebhookSink::start().await;
    let mut howk = Howk::new(&[]).await;
    howk.start_ready().await;
    let id = "wh_victim_0001";
    let victim = format!(
        r#"{{"id": "{id}", "endpoint": "{}", "payload": 1}}"#,
        sink.url("victim")
    );
    let (status, _) = post(&howk.api("/webhooks/victim/enqueue"), &victim).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let status_url = howk.api(&format!("/webhooks/{id}/status"));
    wait_for(
        "the victim's webhook delivered",
        Duration::from_secs(60),
        || {
            let url = status_url.clone();
            async move {
                let (status, body) = call(reqwest::Method::GET, &url, None, None).await;
                (status == StatusCode::OK && body["state"] == "delivered").then_some(())
            }
        },
    )
    .await;

    // The attacker reuses the id for a webhook that fails for good (400 → dead-lettered).
    sink.plan("attacker", [Reply::status(400)]);
    let attacker = format!(
        r#"{{"id": "{id}", "endpoint": "{}", "payload": 2, "max_attempts": 1}}"#,
        sink.url("attacker")
    );
    let (status, _) = post(&howk.api("/webhooks/attacker/enqueue"), &attacker).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let mut results = howk.tail("results");
    results.until(
        "the attacker's dead_lettered result",
        Duration::from_secs(60),
        |records| {
            records.iter().any(|(_, value)| {
                let text = String::from_utf8_lossy(value);
                text.contains("\"attacker\"") && text.contains("dead_lettered")
            })
        },
    );
    // Once that result is on the topic, the status stage has had it or soon will: read the
    // status until the stats show the attacker's outcome was folded, then check the status.
    wait_for(
        "the stats to count the dead letter",
        Duration::from_secs(30),
        || {
            let url = howk.api("/stats");
            async move {
                let (_, stats) = call(reqwest::Method::GET, &url, None, None).await;
                (stats["last_1h"]["exhausted"].as_u64() >= Some(1)).then_some(())
            }
        },
    )
    .await;
    let (status, body) = call(reqwest::Method::GET, &status_url, None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["state"], "delivered", "{body}");
    assert_eq!(body["config_id"], "victim");
}
