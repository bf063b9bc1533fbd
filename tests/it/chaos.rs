//! The chaos soak: steady load through a receiver that sometimes answers 500 or slowly, while
//! howk is killed (-9) and restarted, the broker restarted, Redis stopped, and a second instance
//! added and removed, at random. Then the topics (read_committed) must show every accepted
//! webhook `delivered` or dead-lettered, and no `(webhook_id, attempt, outcome)` result twice.
//! Receiver duplicates (the same attempt POSTed twice) are counted and reported: they are
//! allowed around kills, where an attempt's outcome died with the process.
//!
//! `./scripts/test` runs a short variant (`HOWK_CHAOS_SECS`, default 45 s of load, each fault
//! kind once); `scripts/chaos [SECONDS]` the full one (default 300 s, each kind at least twice).
//! `HOWK_CHAOS_SEED` replays a run's fault order and receiver behaviour.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use howk_processor::ids::WebhookId;
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::helpers::howk::{Howk, Tail};
use crate::helpers::own_broker::OwnBroker;
use crate::helpers::private_redis::PrivateRedis;
use crate::helpers::sink::{Chaos, WebhookSink};

/// Webhooks enqueued per second.
const RATE: u64 = 20;
/// Tenants (config_ids of the namespace that has the script) and endpoints.
const CONFIGS: u64 = 4;
const ENDPOINTS: u64 = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Fault {
    KillHowk,
    RestartBroker,
    StopRedis,
    AddInstance,
    RemoveInstance,
}

impl Fault {
    fn label(self) -> &'static str {
        match self {
            Fault::KillHowk => "kill -9 howk",
            Fault::RestartBroker => "broker restart",
            Fault::StopRedis => "redis stop",
            Fault::AddInstance => "second instance added",
            Fault::RemoveInstance => "second instance removed",
        }
    }
}

/// xorshift64: deterministic from the seed.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The faults of a run: every kind `repeats` times, adds and removes paired, in random order.
fn schedule(random: &mut Random, repeats: usize) -> Vec<Fault> {
    let mut singles = Vec::new();
    for _ in 0..repeats {
        singles.extend([Fault::KillHowk, Fault::RestartBroker, Fault::StopRedis]);
        singles.push(Fault::AddInstance); // its removal follows somewhere after it
    }
    for i in (1..singles.len()).rev() {
        singles.swap(i, (random.next() % (i as u64 + 1)) as usize);
    }
    let mut faults = Vec::new();
    let mut open_adds = 0;
    for fault in singles {
        faults.push(fault);
        if fault == Fault::AddInstance {
            open_adds += 1;
        } else if open_adds > 0 && random.next().is_multiple_of(2) {
            faults.push(Fault::RemoveInstance);
            open_adds -= 1;
        }
    }
    faults.extend(std::iter::repeat_n(Fault::RemoveInstance, open_adds));
    faults
}

fn webhook_id(n: u64) -> String {
    WebhookId::from_idempotency_key(&config_id(n), &format!("k{n}"))
        .as_str()
        .to_owned()
}

fn config_id(n: u64) -> String {
    format!("chaos:{}", n % CONFIGS)
}

/// Enqueues webhooks at `RATE` until `stop`, each retried until the broker acknowledges it
/// (the broker may be down for seconds). Idempotency keys make a retried write harmless.
async fn load(
    brokers: String,
    topic: String,
    sink: WebhookSink,
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicUsize>,
) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("enable.idempotence", "true")
        .set("partitioner", "murmur2_random")
        .set("message.timeout.ms", "120000")
        .set("log_level", "0")
        .create()
        .unwrap();
    let mut tick = tokio::time::interval(Duration::from_millis(1000 / RATE));
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let value = format!(
            r#"{{"endpoint": "{}", "payload": {{"n": {n}}}, "idempotency_key": "k{n}", "max_attempts": 30}}"#,
            sink.url(&format!("e{}", n % ENDPOINTS))
        );
        let key = config_id(n);
        loop {
            let record = FutureRecord::to(&topic).key(&key).payload(&value);
            match producer.send(record, Duration::from_secs(120)).await {
                Ok(_) => break,
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
        n += 1;
        accepted.store(n as usize, Ordering::Relaxed);
    }
}

/// SIGTERM, then SIGKILL if it has not left within 30 s (a broker may be down).
fn terminate(howk: &mut Howk) {
    let deadline = Instant::now() + Duration::from_secs(30);
    if let Some(pid) = howk.pid() {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        while howk.running() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    howk.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_soak_loses_and_duplicates_nothing() {
    let secs: u64 = env_or("HOWK_CHAOS_SECS", 45);
    let seed: u64 = env_or(
        "HOWK_CHAOS_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            | 1,
    );
    let mut random = Random(seed);
    let repeats = if secs >= 180 { 2 } else { 1 };
    let faults = schedule(&mut random, repeats);
    let redis_outage = Duration::from_secs((secs / 10).clamp(3, 30));
    eprintln!("chaos: {secs} s of load, seed {seed}, faults {faults:?}");

    let broker = OwnBroker::start();
    let address = format!("127.0.0.1:{}", broker.port);
    let mut redis = Some(PrivateRedis::start());
    let redis_port = redis.as_ref().unwrap().port;
    let sink = WebhookSink::start().await;
    sink.chaos(Some(Chaos {
        errors: 0.1,
        slow_share: 0.05,
        slow: Duration::from_secs(1),
        seed,
    }));
    let redis_addr = format!("127.0.0.1:{redis_port}");
    let mut first = Howk::new(&[
        ("HOWK_KAFKA_BROKERS", &address),
        ("HOWK_REDIS_ADDR", &redis_addr),
        ("HOWK_RETRY_MAX_DELAY", "2s"),
        ("HOWK_CIRCUIT_BREAKER_FAILURE_THRESHOLD", "20"),
        ("HOWK_CIRCUIT_BREAKER_RECOVERY_TIMEOUT", "2s"),
        ("HOWK_PROCESSING_SHUTDOWN_GRACE", "2s"),
        ("RUST_LOG", "warn"),
    ])
    .await;
    first.brokers = address.clone();
    // Every webhook's script touches Redis: its outage is a transient failure, retried.
    first
        .put_script(
            "chaos",
            "local err = kv.set('chaos:last', metadata.webhook_id) if err then error(err) end \
             request.headers['X-Chaos'] = 'yes'",
        )
        .await;
    first.start();
    let mut second: Option<Howk> = None;

    let stop_load = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(AtomicUsize::new(0));
    let loader = tokio::spawn(load(
        address.clone(),
        first.topic("pending"),
        sink.clone(),
        Arc::clone(&stop_load),
        Arc::clone(&accepted),
    ));

    let started = Instant::now();
    let spacing = Duration::from_secs(secs) / (faults.len() as u32 + 1);
    let mut injected: HashMap<&'static str, usize> = HashMap::new();
    for (i, fault) in faults.iter().enumerate() {
        // Random spacing around the even schedule: ±40 %.
        let jitter = spacing.mul_f64(0.6 + (random.next() % 800) as f64 / 1000.0);
        let at = spacing * (i as u32) + jitter;
        if let Some(wait) = at.checked_sub(started.elapsed()) {
            tokio::time::sleep(wait).await; // the load runs meanwhile: this is the fault's timing
        }
        eprintln!(
            "chaos: {:>5.1} s: {}",
            started.elapsed().as_secs_f64(),
            fault.label()
        );
        let mut removed = 0;
        tokio::task::block_in_place(|| match fault {
            Fault::KillHowk => {
                first.kill();
                first.start();
            }
            Fault::RestartBroker => {
                broker.stop();
                broker.restart();
            }
            Fault::StopRedis => {
                let (port, dir) = redis.take().unwrap().stop();
                std::thread::sleep(redis_outage); // the outage itself
                redis = Some(PrivateRedis::start_on(port, dir));
            }
            Fault::AddInstance => {
                let mut sibling = first.sibling(&format!("i{}", i + 1));
                sibling.brokers = address.clone();
                sibling.start();
                if let Some(mut old) = second.replace(sibling) {
                    terminate(&mut old);
                    removed += 1;
                }
            }
            Fault::RemoveInstance => {
                if let Some(mut old) = second.take() {
                    terminate(&mut old);
                    removed += 1;
                }
            }
        });
        // Only what happened: a removal with no second instance running is no fault.
        if *fault != Fault::RemoveInstance {
            *injected.entry(fault.label()).or_default() += 1;
        }
        *injected.entry(Fault::RemoveInstance.label()).or_default() += removed;
    }
    if let Some(wait) = Duration::from_secs(secs).checked_sub(started.elapsed()) {
        tokio::time::sleep(wait).await;
    }
    stop_load.store(true, Ordering::Relaxed);
    loader.await.unwrap();
    let accepted = accepted.load(Ordering::Relaxed) as u64;
    sink.chaos(None);

    // Everything is up again: every accepted webhook must reach an end.
    let expected: HashSet<String> = (0..accepted).map(webhook_id).collect();
    let mut results = Tail::new(&address, &first.topic("results"));
    let terminal = |records: &[(String, Vec<u8>)]| -> HashSet<String> {
        records
            .iter()
            .filter_map(|(_, value)| serde_json::from_slice::<serde_json::Value>(value).ok())
            .filter(|r| r["outcome"] == "delivered" || r["outcome"] == "dead_lettered")
            .filter_map(|r| r["webhook_id"].as_str().map(str::to_owned))
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(180);
    while Instant::now() < deadline && !expected.is_subset(&terminal(&results.records)) {
        tokio::task::block_in_place(|| results.poll(Duration::from_millis(500)));
    }
    tokio::task::block_in_place(|| results.poll(Duration::from_millis(500)));

    let mut seen: HashMap<(String, u64, String), usize> = HashMap::new();
    let (mut delivered, mut dead_lettered) = (HashSet::new(), HashSet::new());
    for result in results.json() {
        let id = result["webhook_id"].as_str().unwrap_or_default().to_owned();
        let outcome = result["outcome"].as_str().unwrap_or_default().to_owned();
        match outcome.as_str() {
            "delivered" => {
                delivered.insert(id.clone());
            }
            "dead_lettered" => {
                dead_lettered.insert(id.clone());
            }
            // A hold repeats for the same attempt by design; a repeat is dropped on purpose.
            "circuit_open" | "duplicate" => continue,
            _ => {}
        }
        let attempt = result["attempt"].as_u64().unwrap_or_default();
        *seen.entry((id, attempt, outcome)).or_default() += 1;
    }
    let duplicate_results: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    let lost: Vec<&String> = expected
        .iter()
        .filter(|id| !delivered.contains(*id) && !dead_lettered.contains(*id))
        .collect();
    let mut per_attempt: HashMap<(String, String), usize> = HashMap::new();
    for request in sink.all_received() {
        let id = request
            .header("x-webhook-id")
            .unwrap_or_default()
            .to_owned();
        let attempt = request
            .header("x-webhook-attempt")
            .unwrap_or_default()
            .to_owned();
        *per_attempt.entry((id, attempt)).or_default() += 1;
    }
    let receiver_duplicates: usize = per_attempt.values().map(|n| n - 1).sum();
    let received_ids: HashSet<&str> = per_attempt.keys().map(|(id, _)| id.as_str()).collect();
    let delivered_unseen = delivered
        .iter()
        .filter(|id| !received_ids.contains(id.as_str()))
        .count();

    let faults_line: Vec<String> = [
        Fault::KillHowk,
        Fault::RestartBroker,
        Fault::StopRedis,
        Fault::AddInstance,
        Fault::RemoveInstance,
    ]
    .iter()
    .map(|f| format!("{} ×{}", f.label(), injected.get(f.label()).unwrap_or(&0)))
    .collect();
    eprintln!(
        "\n| chaos soak | |\n|---|---|\n| load | {secs} s at {RATE}/s, seed {seed} |\n\
         | faults | {} (redis outages of {} s) |\n| accepted | {accepted} |\n\
         | delivered | {} |\n| dead-lettered | {} |\n| lost | {} |\n\
         | duplicate results | {} |\n| receiver duplicates | {receiver_duplicates} |\n\
         | delivered but never received | {delivered_unseen} |\n",
        faults_line.join(", "),
        redis_outage.as_secs(),
        delivered.len(),
        dead_lettered.len(),
        lost.len(),
        duplicate_results.len(),
    );
    assert!(accepted > 0);
    assert!(lost.is_empty(), "lost webhooks: {lost:?}");
    assert!(
        duplicate_results.is_empty(),
        "duplicate results: {duplicate_results:?}"
    );
    assert_eq!(
        delivered_unseen, 0,
        "delivered webhooks the receiver never saw"
    );
    if let Some(mut sibling) = second.take() {
        terminate(&mut sibling);
    }
    terminate(&mut first);
}
