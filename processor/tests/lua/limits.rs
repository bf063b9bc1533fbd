//! Hard limits: time (wall clock, in tight loops, coroutines, and through pcall) and memory
//! (real allocations); after any limit the same engine runs the next script normally.

use std::time::{Duration, Instant};

use howk_processor::lua::{LuaEngine, ScriptErrorKind};

use crate::helpers::*;

const TIMEOUT: Duration = Duration::from_millis(100);

fn assert_next_execution_succeeds(engine: &mut LuaEngine) {
    let request = run_on(
        engine,
        "request.body = json.encode({ok = true})",
        &Webhook::default(),
    )
    .expect("the engine recovers after a limit");
    assert_eq!(request.body.unwrap(), br#"{"ok":true}"#);
}

fn assert_times_out(code: &str) {
    let mut engine = limited_engine(TIMEOUT, 50);
    let start = Instant::now();
    let error = run_on(&mut engine, code, &Webhook::default()).unwrap_err();
    let elapsed = start.elapsed();
    assert_eq!(error.kind, ScriptErrorKind::Timeout, "{code}: {error}");
    assert!(
        elapsed < TIMEOUT + Duration::from_millis(50),
        "{code}: stopped after {elapsed:?}"
    );
    assert!(!error.is_retryable());
    assert_next_execution_succeeds(&mut engine);
}

#[test]
fn tight_loop_is_stopped_within_the_timeout() {
    assert_times_out("while true do end");
}

#[test]
fn loop_inside_a_coroutine_is_stopped() {
    assert_times_out(
        "local co = coroutine.create(function() while true do end end) coroutine.resume(co)",
    );
    assert_times_out("coroutine.wrap(function() while true do end end)()");
}

#[test]
fn pcall_cannot_swallow_the_timeout() {
    assert_times_out("while true do pcall(function() while true do end end) end");
    assert_times_out(
        "while true do xpcall(function() while true do end end, function(e) return e end) end",
    );
    assert_times_out("while true do pcall(pcall, function() while true do end end) end");
    assert_times_out(
        "while true do local co = coroutine.create(function() while true do end end) \
         coroutine.resume(co) end",
    );
}

#[test]
fn error_handler_loop_is_stopped() {
    assert_times_out("xpcall(error, function() while true do end end)");
}

#[test]
fn recursion_through_pcall_is_stopped() {
    assert_times_out("local function f() pcall(f) f() end f()");
}

#[test]
fn default_timeout_is_500ms() {
    let mut engine = engine();
    let start = Instant::now();
    let error = run_on(&mut engine, "while true do end", &Webhook::default()).unwrap_err();
    assert_eq!(error.kind, ScriptErrorKind::Timeout);
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_millis(500) && elapsed < Duration::from_millis(550),
        "{elapsed:?}"
    );
}

fn assert_memory_limited(code: &str) {
    let mut engine = limited_engine(Duration::from_secs(5), 8);
    let error = run_on(&mut engine, code, &Webhook::default()).unwrap_err();
    assert_eq!(error.kind, ScriptErrorKind::MemoryLimit, "{code}: {error}");
    assert!(!error.is_retryable());
    assert_next_execution_succeeds(&mut engine);
}

#[test]
fn table_memory_bomb_is_stopped() {
    assert_memory_limited("local t = {} local i = 0 while true do i = i + 1 t[i] = {i, i, i} end");
}

#[test]
fn string_rep_bomb_is_stopped() {
    assert_memory_limited("local s = string.rep('x', 1024 * 1024 * 1024)");
    assert_memory_limited("local s = ('x'):rep(64 * 1024 * 1024)");
}

#[test]
fn string_doubling_bomb_is_stopped() {
    assert_memory_limited("local s = 'x' while true do s = s .. s end");
}

#[test]
fn json_decode_of_huge_input_is_memory_limited() {
    assert_memory_limited(
        "local parts = {} for i = 1, 200000 do parts[i] = '[1,2,3,4,5,6,7,8]' end \
         local doc = '[' .. table.concat(parts, ',') .. ']' local v = json.decode(doc)",
    );
}

#[test]
fn catching_memory_errors_still_ends_within_limits() {
    // Each allocation past the limit fails; a script that keeps catching them cannot grow, and
    // then runs into the time limit instead.
    let mut engine = limited_engine(TIMEOUT, 8);
    let error = run_on(
        &mut engine,
        "local keep = {} while true do pcall(function() keep[#keep + 1] = string.rep('x', 1024 * 1024) end) end",
        &Webhook::default(),
    )
    .unwrap_err();
    assert!(
        matches!(
            error.kind,
            ScriptErrorKind::Timeout | ScriptErrorKind::MemoryLimit
        ),
        "{error}"
    );
    assert_next_execution_succeeds(&mut engine);
}

#[test]
fn deep_recursion_ends_in_a_clean_error() {
    let mut engine = limited_engine(Duration::from_secs(5), 50);
    let error = run_on(
        &mut engine,
        "local function f(n) return 1 + f(n + 1) end f(1)",
        &Webhook::default(),
    )
    .unwrap_err();
    assert!(
        matches!(
            error.kind,
            ScriptErrorKind::Runtime | ScriptErrorKind::MemoryLimit
        ),
        "{error}"
    );
    assert!(
        error.message.contains("stack overflow") || error.kind == ScriptErrorKind::MemoryLimit,
        "{error}"
    );
    assert_next_execution_succeeds(&mut engine);
}

#[test]
fn deeply_nested_json_is_refused_cleanly() {
    let nested = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let webhook = Webhook::payload(nested.into_bytes());
    let request = run_on(
        &mut engine(),
        "local v, err = json.decode(payload) request.body = err",
        &webhook,
    )
    .unwrap();
    let message = String::from_utf8(request.body.unwrap()).unwrap();
    assert!(message.contains("recursion limit"), "{message}");
}
