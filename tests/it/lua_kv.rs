//! The `kv` module against the real Redis: round trips, expiry, namespaces, and an outage —
//! `(nil, err)` and a retryable failure while Redis is down, recovery when it returns, with
//! nothing restarted.

use std::time::Duration;

use redis::AsyncCommands;

use crate::helpers::lua::{Webhook, body, engine_settings, redis_kv, run, test_lua_config};
use crate::helpers::private_redis::PrivateRedis;
use crate::helpers::{redis_url, unique, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_get_del_round_trip_in_the_namespace_key() {
    let settings = engine_settings(&test_lua_config(), redis_kv(&redis_url()));
    let key = unique("token");
    let webhook = Webhook::for_config("music:10");
    let got = body(
        &settings,
        &format!(
            "local err = kv.set('{key}', 'abc') assert(err == nil, err) \
             request.body = kv.get('{key}')"
        ),
        &webhook,
    )
    .await;
    assert_eq!(got, "abc");

    // The value lives under kv:{namespace}:{key}, with the default TTL (24 h).
    let mut redis = redis::Client::open(redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let stored: Option<String> = redis.get(format!("kv:music:{key}")).await.unwrap();
    assert_eq!(stored.as_deref(), Some("abc"));
    let ttl: i64 = redis.ttl(format!("kv:music:{key}")).await.unwrap();
    assert!((86_000..=86_400).contains(&ttl), "ttl {ttl}");

    let got = body(
        &settings,
        &format!("kv.del('{key}') request.body = tostring(kv.get('{key}'))"),
        &webhook,
    )
    .await;
    assert_eq!(got, "nil");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_expires_and_zero_means_no_expiry() {
    let settings = engine_settings(&test_lua_config(), redis_kv(&redis_url()));
    let key = unique("short");
    let webhook = Webhook::for_config("exp");
    body(&settings, &format!("kv.set('{key}', 'v', 0.3)"), &webhook).await;
    assert_eq!(
        body(
            &settings,
            &format!("request.body = kv.get('{key}')"),
            &webhook
        )
        .await,
        "v"
    );
    wait_for("the kv entry to expire", Duration::from_secs(5), || {
        let (settings, webhook, key) = (settings.clone(), webhook.clone(), key.clone());
        async move {
            let got = body(
                &settings,
                &format!("request.body = tostring(kv.get('{key}'))"),
                &webhook,
            )
            .await;
            (got == "nil").then_some(())
        }
    })
    .await;

    let forever = unique("forever");
    body(&settings, &format!("kv.set('{forever}', 'v', 0)"), &webhook).await;
    let mut redis = redis::Client::open(redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let ttl: i64 = redis.ttl(format!("kv:exp:{forever}")).await.unwrap();
    assert_eq!(ttl, -1, "no expiry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_share_within_and_isolate_across() {
    let settings = engine_settings(&test_lua_config(), redis_kv(&redis_url()));
    let key = unique("shared");
    body(
        &settings,
        &format!("kv.set('{key}', 'from-a1')"),
        &Webhook::for_config("a:1"),
    )
    .await;
    let read = format!("request.body = tostring(kv.get('{key}'))");
    assert_eq!(
        body(&settings, &read, &Webhook::for_config("a:2")).await,
        "from-a1"
    );
    assert_eq!(
        body(&settings, &read, &Webhook::for_config("a")).await,
        "from-a1"
    );
    assert_eq!(
        body(&settings, &read, &Webhook::for_config("b:1")).await,
        "nil"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_is_a_retryable_failure_and_recovers_by_itself() {
    let redis = PrivateRedis::start();
    let settings = engine_settings(&test_lua_config(), redis_kv(&redis.url()));
    let webhook = Webhook::for_config("outage");
    let script = "local err = kv.set('k', 'v') if err then error(err) end \
                  local v, err = kv.get('k') if err then error(err) end request.body = v";
    wait_for(
        "the private Redis to serve",
        Duration::from_secs(10),
        || {
            let (settings, webhook) = (settings.clone(), webhook.clone());
            async move { run(&settings, script, &webhook).await.ok() }
        },
    )
    .await;

    let (port, dir) = redis.stop();
    // A get that fails returns (nil, err) to the script...
    let got = body(
        &settings,
        "local v, err = kv.get('k') request.body = tostring(v) .. '|' .. tostring(err)",
        &webhook,
    )
    .await;
    assert!(got.starts_with("nil|kv.get: "), "{got}");
    // ...and a script that then fails is retryable, naming the transient cause.
    let error = run(&settings, script, &webhook).await.unwrap_err();
    assert!(error.is_retryable(), "{error}");
    assert!(
        error
            .transient_cause
            .as_deref()
            .unwrap_or_default()
            .starts_with("kv.set: "),
        "{error}"
    );

    let _restarted = PrivateRedis::start_on(port, dir);
    let request = wait_for(
        "kv to recover after Redis returns",
        Duration::from_secs(15),
        || {
            let (settings, webhook) = (settings.clone(), webhook.clone());
            async move { run(&settings, script, &webhook).await.ok() }
        },
    )
    .await;
    assert_eq!(request.body.unwrap(), b"v");
}
