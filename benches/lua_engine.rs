//! Lua engine benches: a typical JSON transform and a header-only transform, each with the full
//! sandbox and a fresh environment per execution, on a reused engine (as delivery runs them).
//!
//! `cargo bench -p howk-processor --bench lua_engine` prints criterion's estimates, then a
//! latency pass of 200,000 executions each with p50/p99/p99.9, since criterion reports means
//! and medians of batches, not per-execution tails.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group};
use howk_processor::lua::{LuaConfig, LuaEngine, Script, ScriptInput, ScriptMetadata};

const JSON_TRANSFORM: &str = r#"
local data = json.decode(payload)
data.processed = true
data.source = "howk"
request.body = json.encode(data)
headers["X-Event-Type"] = data.type
headers["X-Customer"] = tostring(data.customer.id)
"#;

const HEADER_TRANSFORM: &str = r#"
headers["X-Transformed"] = "by-lua-script"
headers["X-Config"] = metadata.config_id
"#;

/// String work with patterns on the payload: howk's deadline-checking matcher (pattern.rs).
const PATTERN_TRANSFORM: &str = r#"
local id = payload:match('"id":%s*"?([%w_]+)')
local compact = payload:gsub("%s+", " ")
local _, quotes = payload:gsub('"', '"')
local words = 0
for _ in payload:gmatch("%a+") do words = words + 1 end
request.body = compact
headers["X-Id"] = tostring(id)
headers["X-Counts"] = quotes .. "/" .. words .. "/" .. tostring(payload:find("customer", 1, true))
"#;

/// A ~1 KB order event, the size of a typical webhook.
fn payload() -> Vec<u8> {
    let items: Vec<String> = (0..8)
        .map(|i| {
            format!(
                r#"{{"sku":"SKU-{i:04}","name":"Item number {i}","qty":{q},"price":{p}.99}}"#,
                q = i + 1,
                p = 10 + i
            )
        })
        .collect();
    let payload = format!(
        r#"{{"id":"evt_01JD3Q6V8X9Y0Z1A2B3C4D5E6F","type":"order.created","created":1764149400,"customer":{{"id":9007199254740993,"email":"jane@example.com","name":"Jane Doe"}},"items":[{}],"total":1234.56,"currency":"EUR","metadata":{{"channel":"web","campaign":null}}}}"#,
        items.join(",")
    );
    payload.into_bytes()
}

fn engine() -> LuaEngine {
    LuaEngine::new(LuaConfig::default().engine_settings(Arc::new(|_| None)))
}

struct Fixture {
    payload: Vec<u8>,
    headers: Vec<(String, String)>,
}

impl Fixture {
    fn new() -> Self {
        Self {
            payload: payload(),
            headers: vec![
                ("Content-Type".into(), "application/json".into()),
                ("X-Request-Id".into(), "req-123".into()),
            ],
        }
    }

    fn input(&self) -> ScriptInput<'_> {
        ScriptInput {
            payload: &self.payload,
            headers: &self.headers,
            metadata: ScriptMetadata {
                webhook_id: "wh_01JD3Q6V8X9Y0Z1A2B3C4D5E6F",
                config_id: "shop:42",
                attempt: 0,
                max_attempts: 20,
                created_at: "2026-11-26T09:30:00Z",
            },
            previous_error: None,
        }
    }
}

fn bench_engine(c: &mut Criterion) {
    let fixture = Fixture::new();
    let mut group = c.benchmark_group("lua_engine");
    for (name, code) in [
        ("json_transform_1kb", JSON_TRANSFORM),
        ("header_transform", HEADER_TRANSFORM),
        ("pattern_transform_1kb", PATTERN_TRANSFORM),
    ] {
        let mut engine = engine();
        let script = Script::new(code, None);
        engine
            .execute(&script, &fixture.input())
            .expect("script runs");
        group.bench_function(name, |b| {
            b.iter(|| black_box(engine.execute(&script, &fixture.input()).unwrap()))
        });
    }
    // The same pattern work in stock Lua 5.4 (C string library, no sandbox, no deadline
    // checks): what the interruptible matcher costs, measured.
    let stock = mlua::Lua::new();
    stock
        .globals()
        .set("payload", stock.create_string(&fixture.payload).unwrap())
        .unwrap();
    let stock_run = stock
        .load(format!(
            "return function() local request, headers = {{}}, {{}} {PATTERN_TRANSFORM} end"
        ))
        .eval::<mlua::Function>()
        .unwrap();
    group.bench_function("pattern_transform_1kb_stock_c_baseline", |b| {
        b.iter(|| stock_run.call::<()>(()).unwrap())
    });
    group.bench_function("serde_json_roundtrip_1kb_baseline", |b| {
        b.iter(|| {
            let mut value: serde_json::Value = serde_json::from_slice(&fixture.payload).unwrap();
            value["processed"] = true.into();
            black_box(serde_json::to_vec(&value).unwrap())
        })
    });
    group.finish();
}

/// Per-execution latency percentiles over `runs` executions.
fn latency_pass(name: &str, code: &str, runs: usize) {
    let fixture = Fixture::new();
    let mut engine = engine();
    let script = Script::new(code, None);
    for _ in 0..10_000 {
        engine.execute(&script, &fixture.input()).unwrap();
    }
    let mut samples: Vec<Duration> = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        black_box(engine.execute(&script, &fixture.input()).unwrap());
        samples.push(start.elapsed());
    }
    samples.sort_unstable();
    let at = |q: f64| samples[((runs as f64 * q) as usize).min(runs - 1)];
    println!(
        "latency {name:<22} runs={runs} p50={:?} p99={:?} p99.9={:?} max={:?}",
        at(0.50),
        at(0.99),
        at(0.999),
        samples[runs - 1]
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(5));
    targets = bench_engine
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    if std::env::args().any(|arg| matches!(arg.as_str(), "--list" | "--test" | "--profile-time")) {
        return;
    }
    latency_pass("json_transform_1kb", JSON_TRANSFORM, 200_000);
    latency_pass("header_transform", HEADER_TRANSFORM, 200_000);
    latency_pass("pattern_transform_1kb", PATTERN_TRANSFORM, 200_000);
}
