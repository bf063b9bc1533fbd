//! The `http` module against a real HTTP server on loopback (allowed through the explicit CIDR
//! setting): methods, headers, statuses, limits, redirects, singleflight, cache, SSRF default.

use std::sync::{Arc, Barrier};
use std::time::Duration;

use howk_processor::lua::modules::kv::MemoryKv;
use howk_processor::lua::{LuaConfig, LuaEngine, Script, ScriptErrorKind};

use crate::helpers::lua::{Webhook, body, engine_settings, run, test_lua_config};
use crate::helpers::receiver::TestReceiver;
use crate::helpers::wait_for;

fn settings(config: &LuaConfig) -> howk_processor::lua::EngineSettings {
    engine_settings(config, Arc::new(MemoryKv::default()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn methods_headers_bodies_and_statuses_pass_through() {
    let receiver = TestReceiver::start().await;
    let settings = settings(&test_lua_config());
    let webhook = Webhook::for_config("web");
    let echo = receiver.url("/echo");
    for (call, method, sent) in [
        (
            format!("http.get('{echo}', {{['X-Test'] = 'h'}})"),
            "GET",
            "",
        ),
        (
            format!("http.post('{echo}', 'p-body', {{['X-Test'] = 'h'}})"),
            "POST",
            "p-body",
        ),
        (
            format!("http.put('{echo}', 'u-body', {{['X-Test'] = 'h'}})"),
            "PUT",
            "u-body",
        ),
        (
            format!("http.delete('{echo}', nil, {{['X-Test'] = 'h'}})"),
            "DELETE",
            "",
        ),
    ] {
        let got = body(
            &settings,
            &format!(
                "local r, err = {call} assert(r, err) local d = json.decode(r.body) \
                 request.body = r.status_code .. '|' .. d.method .. '|' .. d.body .. '|' .. d.x_test \
                 .. '|' .. r.headers['x-echo']"
            ),
            &webhook,
        )
        .await;
        assert_eq!(got, format!("200|{method}|{sent}|h|yes"));
    }
    for status in [201, 404, 503] {
        let got = body(
            &settings,
            &format!(
                "request.body = tostring(http.get('{}').status_code)",
                receiver.url(&format!("/status/{status}"))
            ),
            &webhook,
        )
        .await;
        assert_eq!(got, status.to_string());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_is_a_transient_failure() {
    let receiver = TestReceiver::start().await;
    let config = LuaConfig {
        http_timeout: Duration::from_millis(200),
        ..test_lua_config()
    };
    let settings = settings(&config);
    let error = run(
        &settings,
        &format!(
            "local r, err = http.get('{}') if not r then error(err) end",
            receiver.url("/slow/2000")
        ),
        &Webhook::for_config("web"),
    )
    .await
    .unwrap_err();
    assert_eq!(error.kind, ScriptErrorKind::Runtime);
    assert!(error.is_retryable(), "{error}");
    assert!(error.message.contains("timed out"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_transient_but_returned() {
    let receiver = TestReceiver::start().await;
    let settings = settings(&test_lua_config());
    let error = run(
        &settings,
        &format!(
            "local r = http.get('{}') if r.status_code ~= 200 then error('auth service: ' .. r.status_code) end",
            receiver.url("/status/503")
        ),
        &Webhook::for_config("web"),
    )
    .await
    .unwrap_err();
    assert!(error.is_retryable(), "{error}");
    assert!(error.message.contains("auth service: 503"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_body_is_capped() {
    let receiver = TestReceiver::start().await;
    let config = LuaConfig {
        http_max_response_bytes: 1024,
        ..test_lua_config()
    };
    let settings = settings(&config);
    let webhook = Webhook::for_config("web");
    let got = body(
        &settings,
        &format!(
            "local r, err = http.get('{}') request.body = tostring(#r.body)",
            receiver.url("/big/1024")
        ),
        &webhook,
    )
    .await;
    assert_eq!(got, "1024");
    let got = body(
        &settings,
        &format!(
            "local r, err = http.get('{}') request.body = tostring(r) .. '|' .. err",
            receiver.url("/big/1025")
        ),
        &webhook,
    )
    .await;
    assert!(
        got.starts_with("nil|") && got.contains("exceeds 1024 bytes"),
        "{got}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_followed_only_to_allowed_hosts() {
    let receiver = TestReceiver::start().await;
    let settings = settings(&test_lua_config());
    let webhook = Webhook::for_config("web");
    let allowed = format!("{}?to={}", receiver.url("/redirect"), receiver.url("/echo"));
    let got = body(
        &settings,
        &format!("local r, err = http.get('{allowed}') request.body = r and tostring(r.status_code) or err"),
        &webhook,
    )
    .await;
    assert_eq!(got, "200");
    // Same server, but under a name the allowlist does not have.
    let elsewhere = format!("http://localhost:{}/echo", receiver.addr.port());
    let refused = format!("{}?to={elsewhere}", receiver.url("/redirect"));
    let got = body(
        &settings,
        &format!("local r, err = http.get('{refused}') request.body = tostring(r) .. '|' .. err"),
        &webhook,
    )
    .await;
    assert!(
        got.starts_with("nil|") && got.contains("host localhost is not in the http allowlist"),
        "{got}"
    );
    assert_eq!(receiver.hits("/echo"), 1, "the refused hop was never sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_is_refused_without_an_explicit_cidr() {
    let receiver = TestReceiver::start().await;
    let config = LuaConfig {
        allowed_hosts: vec!["*".into()],
        ..LuaConfig::default()
    };
    let settings = settings(&config);
    let webhook = Webhook::for_config("web");
    for url in [
        receiver.url("/echo"),
        format!("http://localhost:{}/echo", receiver.addr.port()),
    ] {
        let got = body(
            &settings,
            &format!("local r, err = http.get('{url}') request.body = tostring(r) .. '|' .. err"),
            &webhook,
        )
        .await;
        assert!(
            got.starts_with("nil|") && got.contains("loopback"),
            "{url}: {got}"
        );
    }
    assert_eq!(receiver.hits("/echo"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_identical_gets_share_one_upstream_request() {
    let receiver = TestReceiver::start().await;
    let settings = settings(&test_lua_config());
    let url = receiver.url("/slow/300");
    const CALLERS: usize = 8;
    let barrier = Arc::new(Barrier::new(CALLERS));
    let mut tasks = Vec::new();
    for _ in 0..CALLERS {
        let (settings, barrier, url) = (settings.clone(), Arc::clone(&barrier), url.clone());
        tasks.push(tokio::task::spawn_blocking(move || {
            let mut engine = LuaEngine::new(settings);
            let script = Script::new(format!("request.body = http.get('{url}').body"), None);
            let input = Webhook::for_config("web").owned_input();
            barrier.wait();
            engine.execute(&script, &input.as_input())
        }));
    }
    for task in tasks {
        let request = task.await.unwrap().unwrap();
        assert_eq!(request.body.unwrap(), b"slow");
    }
    assert_eq!(receiver.hits("/slow/300"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_gets_are_served_until_they_expire() {
    let receiver = TestReceiver::start().await;
    let config = LuaConfig {
        http_cache_enabled: true,
        ..test_lua_config()
    };
    let settings = settings(&config);
    let webhook = Webhook::for_config("web");
    let script = format!(
        "request.body = http.get('{}', nil, {{cache_ttl = 1}}).body",
        receiver.url("/token")
    );
    let first = body(&settings, &script, &webhook).await;
    let second = body(&settings, &script, &webhook).await;
    assert_eq!(first, second, "second GET served from the cache");
    assert_eq!(receiver.hits("/token"), 1);
    // Without cache_ttl, nothing is cached.
    let uncached = format!("request.body = http.get('{}').body", receiver.url("/echo"));
    body(&settings, &uncached, &webhook).await;
    body(&settings, &uncached, &webhook).await;
    assert_eq!(receiver.hits("/echo"), 2);
    wait_for(
        "the cached response to expire",
        Duration::from_secs(5),
        || {
            let (settings, webhook, script) = (settings.clone(), webhook.clone(), script.clone());
            let first = first.clone();
            async move { (body(&settings, &script, &webhook).await != first).then_some(()) }
        },
    )
    .await;
    assert_eq!(receiver.hits("/token"), 2);
}
