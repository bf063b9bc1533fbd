//! Twenty uninterruptible-looking `table.move` calls through the engine pool: each must stop
//! as a timeout near the budget, and afterwards the process must have no extra thread and burn
//! no CPU (review H4). Its own test binary, so that the thread count and the CPU time of the
//! process are this test's alone.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use howk_processor::lua::pool::{EnginePool, OwnedInput};
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

/// Threads of this process, from /proc.
fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

/// CPU seconds this process has used, from /proc (utime + stime, in clock ticks of 1/100 s).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

#[tokio::test]
async fn twenty_huge_table_moves_time_out_near_the_budget_and_leave_nothing_spinning() {
    let timeout = Duration::from_millis(100);
    let pool = pool(timeout, 2);
    // Warm: both threads exist.
    for _ in 0..2 {
        pool.execute(Script::new("request.body = 'x'", None), input())
            .await
            .unwrap()
            .unwrap();
    }
    let threads_before = threads();
    for i in 0..20 {
        // A distinct script each time, so none is refused by quarantine.
        let script = Script::new(format!("table.move({{}}, 1, 1 << 62, 2) -- {i}"), None);
        let start = Instant::now();
        let error = pool.execute(script, input()).await.unwrap().unwrap_err();
        let elapsed = start.elapsed();
        assert_eq!(error.kind, ScriptErrorKind::Timeout, "{error}");
        assert!(
            elapsed < timeout + Duration::from_millis(80),
            "run {i} took {elapsed:?}"
        );
    }
    assert_eq!(
        pool.abandoned_threads(),
        0,
        "stopped by the deadline, not abandoned"
    );
    assert_eq!(threads(), threads_before);
    // Idle: over half a second, the process uses almost no CPU.
    let cpu_before = cpu_seconds();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let used = cpu_seconds() - cpu_before;
    assert!(used < 0.1, "{used} CPU seconds used while idle");
}
