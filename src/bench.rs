//! `howk bench`: the end-to-end load benchmark. Starts a fast receiver on loopback, puts a
//! header-transform script, starts the whole topology in this process (on Kafka, or the
//! embedded log with `--embedded`), enqueues N webhooks onto `pending` and reports enqueue
//! rate, delivered/s and enqueue→delivered latency percentiles.
//!
//! Each payload carries its enqueue time (µs since the epoch), so the receiver measures the full
//! path: pending → ingest → delivery → script → HTTP. Topics get a fresh prefix per run.
//!
//! `--unhealthy 0.1` makes a tenth of the endpoints unhealthy — half answer after `--slow`
//! (2 s), half never answer — and measures what the healthy ones still get: the fairness
//! benchmark (SPEC §5). Only healthy deliveries count toward the rate and the latencies.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::body::Bytes;
use clap::Args;
use howk_topology::builder::start;
use howk_topology::log::embedded::EmbeddedLog;
use howk_topology::log::kafka::KafkaLog;
use howk_topology::log::{Log, OutRecord};
use howk_topology::topics::{catalogue, create_topics};

use crate::config::HowkConfig;
use crate::run::{Mode, engines, topology_config};

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Webhooks to enqueue.
    #[arg(long, default_value_t = 100_000)]
    count: usize,
    /// Distinct config_ids (tenants).
    #[arg(long, default_value_t = 20)]
    configs: usize,
    /// Distinct endpoints (paths on the receiver).
    #[arg(long, default_value_t = 50)]
    endpoints: usize,
    /// Run on the embedded log instead of Kafka.
    #[arg(long)]
    embedded: bool,
    /// Enqueue at this many webhooks per second instead of all at once, to measure latency
    /// below saturation (0: as fast as possible).
    #[arg(long, default_value_t = 0)]
    rate: usize,
    /// Share of the endpoints that are unhealthy: half of them slow, half dead (never answer).
    #[arg(long, default_value_t = 0.0)]
    unhealthy: f64,
    /// How long a slow endpoint takes to answer.
    #[arg(long, default_value = "2s", value_parser = humantime_serde::re::humantime::parse_duration)]
    slow: Duration,
    /// Benchmark the replay jobs instead (on Kafka): a dry run over `--count` pending webhooks
    /// and a re-drive of as many dead letters.
    #[arg(long)]
    replay: bool,
}

/// Which route endpoint `n` of `endpoints` is on: the first `unhealthy` share are unhealthy,
/// alternately slow and dead.
fn route(n: usize, endpoints: usize, unhealthy: f64) -> &'static str {
    let bad = (endpoints as f64 * unhealthy).round() as usize;
    match n {
        n if n >= bad => "e",
        n if n % 2 == 0 => "slow",
        _ => "dead",
    }
}

/// Filler that brings a payload to ~100 bytes, a typical small event.
const PAD: &str = "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";

/// Records enqueued per produce call (one transaction on Kafka).
const ENQUEUE_BATCH: usize = 2_000;

/// With `--rate`, a twentieth of a second's webhooks leave every 50 ms.
const PACE_TICK: Duration = Duration::from_millis(50);

const SCRIPT: &str = r#"
request.headers["X-Bench-Id"] = metadata.webhook_id
request.headers["X-Tenant"] = metadata.config_id
"#;

fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// Latencies (µs) seen by the receiver.
#[derive(Default)]
struct Seen {
    latencies: Vec<i64>,
    last_at: Option<Instant>,
}

async fn receive(
    axum::extract::State(seen): axum::extract::State<Arc<Mutex<Seen>>>,
    body: Bytes,
) -> &'static str {
    let now = now_micros();
    // The payload starts `{"t":<µs>,`; a cheap scan, not a JSON parse.
    let sent = body
        .strip_prefix(b"{\"t\":")
        .and_then(|rest| rest.split(|b| *b == b',').next())
        .and_then(|digits| std::str::from_utf8(digits).ok())
        .and_then(|digits| digits.parse::<i64>().ok());
    let mut seen = seen.lock().expect("seen lock");
    if let Some(sent) = sent {
        seen.latencies.push(now - sent);
    }
    seen.last_at = Some(Instant::now());
    "ok"
}

pub async fn run(args: BenchArgs, mut config: HowkConfig) -> anyhow::Result<()> {
    anyhow::ensure!(
        (0.0..1.0).contains(&args.unhealthy),
        "--unhealthy must be at least 0 and below 1"
    );
    let seen = Arc::new(Mutex::new(Seen::default()));
    let slow = args.slow;
    let app = axum::Router::new()
        .route("/e/{n}", axum::routing::post(receive))
        .route(
            "/slow/{n}",
            axum::routing::post(move || async move {
                tokio::time::sleep(slow).await;
                "slow"
            }),
        )
        .route(
            "/dead/{n}",
            axum::routing::post(std::future::pending::<&'static str>),
        )
        .with_state(Arc::clone(&seen));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });

    let prefix = format!("bench-{}", ulid::Ulid::new().to_string().to_lowercase());
    let topics = &mut config.kafka.topics;
    for (name, topic) in [
        ("pending", &mut topics.pending),
        ("scripts", &mut topics.scripts),
        ("delivery", &mut topics.delivery),
        ("retry", &mut topics.retry),
        ("results", &mut topics.results),
        ("deadletter", &mut topics.deadletter),
        ("replays", &mut topics.replays),
    ] {
        *topic = format!("{prefix}.{name}");
    }
    topics.changelog_prefix = format!("{prefix}-");
    config.processing.group = prefix.clone();
    config.processing.instance_id = "bench".into();
    let state = tempfile::tempdir()?;
    config.processing.data_dir = state.path().to_path_buf();
    config.delivery.allowed_cidrs.push("127.0.0.0/8".into());

    if args.replay {
        anyhow::ensure!(!args.embedded, "--replay runs on Kafka");
        create_topics(&config.kafka)
            .await
            .context("creating the bench topics")?;
        println!(
            "howk bench --replay: {} webhooks, {} configs, on Kafka",
            args.count, args.configs
        );
        let (count, configs) = (args.count, args.configs.max(1));
        return tokio::task::spawn_blocking(move || {
            crate::bench_replay::run(count, configs, &config)
        })
        .await?;
    }
    let mode = if args.embedded {
        Mode::Dev { dry: false }
    } else {
        Mode::Kafka
    };
    println!(
        "howk bench: {} webhooks, {} configs, {} endpoints ({:.0} % unhealthy), rate {}, on {}",
        args.count,
        args.configs,
        args.endpoints,
        args.unhealthy * 100.0,
        match args.rate {
            0 => "unpaced".to_owned(),
            rate => format!("{rate}/s"),
        },
        if args.embedded {
            "the embedded log"
        } else {
            "Kafka"
        }
    );
    if args.embedded {
        let log = EmbeddedLog::open(None, &catalogue(&config.kafka))?;
        bench_on(Arc::new(log), &args, &config, mode, addr, &seen).await
    } else {
        create_topics(&config.kafka)
            .await
            .context("creating the bench topics")?;
        let log = KafkaLog::new(config.kafka.clone());
        bench_on(Arc::new(log), &args, &config, mode, addr, &seen).await
    }
}

async fn bench_on<L: Log>(
    log: Arc<L>,
    args: &BenchArgs,
    config: &HowkConfig,
    mode: Mode,
    addr: std::net::SocketAddr,
    seen: &Arc<Mutex<Seen>>,
) -> anyhow::Result<()> {
    let scripts_topic: Arc<str> = Arc::from(config.kafka.topics.scripts.as_str());
    let pending: Arc<str> = Arc::from(config.kafka.topics.pending.as_str());
    let hash = howk_processor::lua::script::script_hash(SCRIPT);
    let mut script_records = Vec::new();
    for config_id in 0..args.configs {
        let value = serde_json::json!({
            "config_id": format!("bench{config_id}"), "lua_code": SCRIPT, "hash": hash,
            "version": "1", "created_at": "2026-01-01T00:00:00Z",
            "updated_at": "2026-01-01T00:00:00Z",
        });
        script_records.push(OutRecord {
            topic: Arc::clone(&scripts_topic),
            partition: None,
            key: format!("bench{config_id}").into_bytes(),
            value: Some(serde_json::to_vec(&value)?),
        });
    }
    {
        let log = Arc::clone(&log);
        tokio::task::spawn_blocking(move || log.produce(script_records)).await??;
    }

    let engines = engines(config, mode)?;
    let handle = tokio::runtime::Handle::current();
    let topology = topology_config(config);
    let running = {
        let log = Arc::clone(&log);
        tokio::task::spawn_blocking(move || start(log, topology, engines, handle)).await??
    };

    // Measure the topology, not its start: wait until its tasks exist.
    let ready_by = Instant::now() + Duration::from_secs(120);
    while !running
        .tasks_ready
        .load(std::sync::atomic::Ordering::Relaxed)
    {
        anyhow::ensure!(
            Instant::now() < ready_by,
            "tasks not ready within 2 minutes"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let started = Instant::now();
    let (count, configs, endpoints) = (args.count, args.configs.max(1), args.endpoints.max(1));
    let unhealthy = args.unhealthy;
    let healthy = (0..count)
        .filter(|i| route(i % endpoints, endpoints, unhealthy) == "e")
        .count();
    // Paced runs enqueue a slice every PACE_TICK; unpaced ones ENQUEUE_BATCH at a time.
    let (batch_size, tick) = match args.rate {
        0 => (ENQUEUE_BATCH, None),
        rate => ((rate / 20).max(1), Some(PACE_TICK)),
    };
    let enqueue = {
        let log = Arc::clone(&log);
        tokio::task::spawn_blocking(move || -> anyhow::Result<Duration> {
            let mut n = 0;
            while n < count {
                if let Some(tick) = tick {
                    // Slice k leaves at k × tick after the start.
                    let due = started + tick * (n / batch_size) as u32;
                    std::thread::sleep(due.saturating_duration_since(Instant::now()));
                }
                let batch: Vec<OutRecord> = (n..(n + batch_size).min(count))
                    .map(|i| {
                        let value = format!(
                            r#"{{"endpoint":"http://{addr}/{}/{}","script_hash":"{hash}","payload":{{"t":{},"n":{i},"pad":"{PAD}"}}}}"#,
                            route(i % endpoints, endpoints, unhealthy),
                            i % endpoints,
                            now_micros(),
                        );
                        OutRecord {
                            topic: Arc::clone(&pending),
                            partition: None,
                            key: format!("bench{}", i % configs).into_bytes(),
                            value: Some(value.into_bytes()),
                        }
                    })
                    .collect();
                n += batch.len();
                log.produce(batch)?;
            }
            Ok(started.elapsed())
        })
    };
    let enqueued_in = enqueue.await??;
    println!(
        "enqueued {count} in {:.2} s ({:.0}/s)",
        enqueued_in.as_secs_f64(),
        count as f64 / enqueued_in.as_secs_f64()
    );

    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let delivered = seen.lock().expect("seen lock").latencies.len();
        if delivered >= healthy {
            break;
        }
        if Instant::now() > deadline {
            anyhow::bail!("only {delivered} of {healthy} delivered within 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (mut latencies, last_at) = {
        let seen = seen.lock().expect("seen lock");
        (
            seen.latencies.clone(),
            seen.last_at.expect("deliveries seen"),
        )
    };
    let total = last_at.duration_since(started);
    latencies.sort_unstable();
    let percentile = |p: f64| {
        let index = ((latencies.len() as f64 - 1.0) * p).round() as usize;
        latencies[index] as f64 / 1000.0
    };
    println!(
        "delivered {healthy}{} in {:.2} s: {:.0} delivered/s",
        if healthy < count {
            " (to healthy endpoints)"
        } else {
            ""
        },
        total.as_secs_f64(),
        healthy as f64 / total.as_secs_f64()
    );
    println!(
        "enqueue→delivered latency: p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        percentile(0.50),
        percentile(0.90),
        percentile(0.99),
        percentile(1.0)
    );
    let metrics = howk_topology::metrics::metrics();
    println!(
        "deliver tasks: {} spilled to their stores, {} overflowed to the retry topic, {} circuit holds",
        metrics.spills.get(),
        metrics.overflows.get(),
        metrics.circuit_holds.get()
    );
    tokio::task::spawn_blocking(move || running.stop()).await??;
    Ok(())
}
