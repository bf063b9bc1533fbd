//! The engine pool: scripts run on engine threads for async callers, and an execution stuck in
//! one library call is abandoned at its deadline plus grace, with the pool still serving.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use howk_processor::lua::pool::{EnginePool, OwnedInput, WATCHDOG_GRACE};
use howk_processor::lua::{LuaConfig, Script, ScriptErrorKind};

fn input() -> OwnedInput {
    OwnedInput {
        payload: Bytes::from_static(br#"{"n":1}"#),
        headers: vec![],
        webhook_id: "wh_pool".into(),
        config_id: "pool:1".into(),
        attempt: 0,
        max_attempts: 5,
        created_at: "2026-11-26T09:30:00Z".into(),
        previous_error: None,
    }
}

fn pool(timeout: Duration, size: usize) -> Arc<EnginePool> {
    let config = LuaConfig {
        timeout,
        ..LuaConfig::default()
    };
    EnginePool::start(config.engine_settings(Arc::new(|_| None)), size, 16)
}

#[tokio::test]
async fn runs_scripts_for_async_callers() {
    let pool = pool(Duration::from_millis(500), 2);
    let mut handles = Vec::new();
    for i in 0..20 {
        let pool = Arc::clone(&pool);
        handles.push(tokio::spawn(async move {
            let script = Script::new(format!("request.body = payload .. '{i}'"), None);
            pool.execute(script, input()).await.unwrap().unwrap()
        }));
    }
    for (i, handle) in handles.into_iter().enumerate() {
        assert_eq!(
            handle.await.unwrap().body.unwrap(),
            format!(r#"{{"n":1}}{i}"#).into_bytes()
        );
    }
    assert_eq!(pool.abandoned_threads(), 0);
}

#[tokio::test]
async fn a_call_stuck_in_a_library_function_is_abandoned_and_the_pool_keeps_serving() {
    let timeout = Duration::from_millis(100);
    let pool = pool(timeout, 1);
    // One string.find call that runs ~1 s on this machine, past any hook.
    let stuck = Script::new(
        "local s = string.rep('a', 250) request.body = tostring(string.find(s, '.-.-.-b'))",
        None,
    );
    let start = Instant::now();
    let outcome = pool.execute(stuck, input()).await.unwrap();
    let elapsed = start.elapsed();
    let error = outcome.unwrap_err();
    assert_eq!(error.kind, ScriptErrorKind::Timeout, "{error}");
    assert!(
        elapsed < timeout + WATCHDOG_GRACE + Duration::from_millis(100),
        "abandoned after {elapsed:?}"
    );
    assert_eq!(pool.abandoned_threads(), 1);

    // The replacement thread serves at once, while the stuck one is still busy.
    let start = Instant::now();
    let request = pool
        .execute(Script::new("request.body = 'next'", None), input())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(request.body.unwrap(), b"next");
    assert!(
        start.elapsed() < Duration::from_millis(100),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn queued_jobs_are_not_abandoned_for_waiting() {
    // One thread, jobs each using most of their budget: later ones wait in the queue longer
    // than a budget, and must still run rather than be declared stuck.
    let pool = pool(Duration::from_millis(100), 1);
    let busy = "local t = os.clock() while os.clock() - t < 0.06 do end request.body = 'ok'";
    let mut handles = Vec::new();
    for _ in 0..6 {
        let pool = Arc::clone(&pool);
        handles.push(tokio::spawn(async move {
            pool.execute(Script::new(busy, None), input())
                .await
                .unwrap()
        }));
    }
    for handle in handles {
        assert_eq!(handle.await.unwrap().unwrap().body.unwrap(), b"ok");
    }
    assert_eq!(pool.abandoned_threads(), 0);
}
