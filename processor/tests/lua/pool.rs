//! The engine pool: scripts run on engine threads for async callers, and an execution stuck in
//! one library call is abandoned at its deadline plus grace, with the pool still serving.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use howk_processor::lua::modules::{LuaModule, ModuleContext};
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

/// A module whose `block(ms)` sleeps in Rust: a library call no hook or deadline check can
/// interrupt, standing in for any C call that might still get stuck.
struct Blocking;

impl LuaModule for Blocking {
    fn name(&self) -> &'static str {
        "blocking"
    }

    fn build(&self, lua: &mlua::Lua, _: &ModuleContext) -> mlua::Result<mlua::Table> {
        let table = lua.create_table()?;
        table.set(
            "block",
            lua.create_function(|_, ms: u64| {
                std::thread::sleep(Duration::from_millis(ms));
                Ok(())
            })?,
        )?;
        Ok(table)
    }
}

fn blocking_pool(timeout: Duration, size: usize) -> Arc<EnginePool> {
    let config = LuaConfig {
        timeout,
        ..LuaConfig::default()
    };
    let mut settings = config.engine_settings(Arc::new(|_| None));
    settings.modules.push(Arc::new(Blocking));
    EnginePool::start(settings, size, 16)
}

#[tokio::test]
async fn a_call_stuck_in_a_library_function_is_abandoned_and_the_pool_keeps_serving() {
    let timeout = Duration::from_millis(100);
    let pool = blocking_pool(timeout, 1);
    let stuck = Script::new("blocking.block(1500) request.body = 'late'", None);
    let start = Instant::now();
    let error = pool
        .execute(stuck.clone(), input())
        .await
        .unwrap()
        .unwrap_err();
    let elapsed = start.elapsed();
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

    // The offending script is refused at once while quarantined, without a thread.
    let start = Instant::now();
    let refused = pool.execute(stuck, input()).await.unwrap().unwrap_err();
    assert_eq!(refused.kind, ScriptErrorKind::Timeout);
    assert!(refused.message.contains("refused"), "{refused}");
    assert!(start.elapsed() < Duration::from_millis(50));
    assert_eq!(pool.abandoned_threads(), 1);
    assert_eq!(pool.health().quarantined_scripts, 1);
}

#[tokio::test]
async fn stuck_threads_are_capped_the_pool_reports_degraded_and_recovers() {
    let timeout = Duration::from_millis(50);
    let pool = blocking_pool(timeout, 1);
    // Two different stuck scripts on a one-thread pool: the first gets a replacement, the
    // second is past the cap (one stuck thread per configured thread), so none.
    for ms in [1200, 1201] {
        let script = Script::new(format!("blocking.block({ms})"), None);
        let error = pool.execute(script, input()).await.unwrap().unwrap_err();
        assert_eq!(error.kind, ScriptErrorKind::Timeout);
    }
    let health = pool.health();
    assert_eq!(health.stuck, 2);
    assert_eq!(health.working, 0);
    assert!(health.degraded());
    assert_eq!(pool.abandoned_threads(), 2);

    // Once the calls return, the stuck threads rejoin with fresh engines up to the pool's size.
    let deadline = Instant::now() + Duration::from_secs(10);
    while pool.health().degraded() || pool.health().stuck > 0 {
        assert!(
            Instant::now() < deadline,
            "never recovered: {:?}",
            pool.health()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(pool.health().working, 1);
    let request = pool
        .execute(Script::new("request.body = 'back'", None), input())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(request.body.unwrap(), b"back");
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
