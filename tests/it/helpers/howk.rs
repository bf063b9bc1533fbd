//! Running the real `howk run` as a child process against the test broker, on topics and a
//! consumer group unique to one test; producing to its input topics and reading its outputs
//! (read_committed, as a downstream consumer would).

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use super::{require_kafka, unique};

/// Partitions of each test topic: enough to exercise several tasks per stage.
pub const PARTITIONS: i32 = 3;

/// One test's howk: its topics, its config (as `HOWK_*` variables) and its process.
pub struct Howk {
    pub brokers: String,
    pub prefix: String,
    env: Vec<(String, String)>,
    pub data_dir: tempfile::TempDir,
    child: Option<Child>,
    /// Each start's stderr, printed when the test fails.
    logs: Vec<PathBuf>,
    /// The REST API's port (fixed per test, so a restart keeps it).
    pub api_port: u16,
}

impl Howk {
    /// Topics created, process not started yet. `extra` are more `HOWK_*` settings.
    pub async fn new(extra: &[(&str, &str)]) -> Self {
        let brokers = require_kafka();
        let prefix = unique("it");
        let data_dir = tempfile::tempdir().unwrap();
        let mut env: Vec<(String, String)> = vec![
            ("HOWK_KAFKA_BROKERS".into(), brokers.clone()),
            ("HOWK_KAFKA_PARTITIONS".into(), PARTITIONS.to_string()),
            (
                "HOWK_KAFKA_TOPICS_CHANGELOG_PREFIX".into(),
                format!("{prefix}-"),
            ),
            ("HOWK_PROCESSING_GROUP".into(), prefix.clone()),
            ("HOWK_PROCESSING_INSTANCE_ID".into(), "i0".into()),
            (
                "HOWK_PROCESSING_DATA_DIR".into(),
                data_dir.path().join("state").display().to_string(),
            ),
            ("HOWK_PROCESSING_SCRIPT_THREADS".into(), "2".into()),
            ("HOWK_DELIVERY_ALLOWED_CIDRS".into(), "127.0.0.0/8".into()),
            ("HOWK_DELIVERY_TIMEOUT".into(), "5s".into()),
            ("HOWK_RETRY_BASE_DELAY".into(), "200ms".into()),
            ("HOWK_RETRY_MAX_DELAY".into(), "5s".into()),
            ("HOWK_RETRY_JITTER".into(), "0".into()),
            (
                "HOWK_REDIS_ADDR".into(),
                super::redis_url().trim_start_matches("redis://").to_owned(),
            ),
            ("RUST_LOG".into(), "info,howk_topology=debug".into()),
        ];
        for topic in [
            "pending",
            "scripts",
            "delivery",
            "retry",
            "results",
            "deadletter",
            "replays",
        ] {
            env.push((
                format!("HOWK_KAFKA_TOPICS_{}", topic.to_uppercase()),
                format!("{prefix}.{topic}"),
            ));
        }
        let api_port = free_port();
        env.push(("HOWK_API_HOST".into(), "127.0.0.1".into()));
        env.push(("HOWK_API_PORT".into(), api_port.to_string()));
        // Tests reach the script routes without a token unless they set one.
        env.push(("HOWK_API_ALLOW_UNAUTHENTICATED_ADMIN".into(), "true".into()));
        for (key, value) in extra {
            env.retain(|(k, _)| k != key);
            env.push((key.to_string(), value.to_string()));
        }
        let howk = Self {
            brokers,
            prefix,
            env,
            data_dir,
            child: None,
            logs: Vec::new(),
            api_port,
        };
        let output = howk.command(&["topics", "create"]).output().unwrap();
        assert!(
            output.status.success(),
            "howk topics create failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        howk
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_howk"));
        command.args(args);
        for (key, value) in &self.env {
            command.env(key, value);
        }
        command
    }

    /// Another instance of the same group on the same topics, with its own instance id, data
    /// dir and API port.
    pub fn sibling(&self, instance_id: &str) -> Self {
        let data_dir = tempfile::tempdir().unwrap();
        let api_port = free_port();
        let mut env = self.env.clone();
        for (key, value) in [
            ("HOWK_PROCESSING_INSTANCE_ID", instance_id.to_owned()),
            (
                "HOWK_PROCESSING_DATA_DIR",
                data_dir.path().join("state").display().to_string(),
            ),
            ("HOWK_API_PORT", api_port.to_string()),
        ] {
            env.retain(|(k, _)| k != key);
            env.push((key.to_owned(), value));
        }
        Self {
            brokers: self.brokers.clone(),
            prefix: self.prefix.clone(),
            env,
            data_dir,
            child: None,
            logs: Vec::new(),
            api_port,
        }
    }

    /// A topic's full name (`pending` → `<prefix>.pending`).
    pub fn topic(&self, name: &str) -> String {
        format!("{}.{name}", self.prefix)
    }

    /// Starts `howk run`.
    pub fn start(&mut self) {
        self.start_with(&["run"]);
    }

    /// Starts `howk <args>` (`run`, `api`).
    pub fn start_with(&mut self, args: &[&str]) {
        assert!(self.child.is_none(), "already running");
        let log = self
            .data_dir
            .path()
            .join(format!("howk-{}.log", self.logs.len()));
        let file = std::fs::File::create(&log).unwrap();
        let child = self
            .command(args)
            .stdout(Stdio::null())
            .stderr(Stdio::from(file))
            .spawn()
            .expect("spawn howk run");
        self.logs.push(log);
        self.child = Some(child);
    }

    /// `http://127.0.0.1:<api port><path>`.
    pub fn api(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.api_port)
    }

    /// Starts `howk run` and waits until `/ready` answers 200.
    pub async fn start_ready(&mut self) {
        self.start();
        self.wait_ready().await;
    }

    /// Waits until `/ready` answers 200.
    pub async fn wait_ready(&self) {
        let client = reqwest::Client::new();
        let url = self.api("/ready");
        super::wait_for("howk /ready", Duration::from_secs(60), || {
            let (client, url) = (client.clone(), url.clone());
            async move {
                let response = client.get(&url).send().await.ok()?;
                (response.status() == 200).then_some(())
            }
        })
        .await;
    }

    /// SIGKILL: no shutdown, no final commit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // It may have exited already (and been reaped by `running`).
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The running process's id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(std::process::Child::id)
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// SIGTERM, then waits for a clean exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let status = child.wait().unwrap();
            assert!(status.success(), "howk run exited with {status}");
        }
    }

    /// Writes `value` to `topic` (a short name) under `key`.
    pub async fn produce(&self, topic: &str, key: &str, value: Option<&[u8]>) {
        produce_many(
            &self.brokers,
            &self.topic(topic),
            &[(key.to_owned(), value.map(<[u8]>::to_vec))],
        )
        .await;
    }

    /// Webhooks `(config_id, JSON)` onto `pending`, in order.
    pub async fn enqueue(&self, webhooks: &[(String, Vec<u8>)]) {
        let records: Vec<(String, Option<Vec<u8>>)> = webhooks
            .iter()
            .map(|(key, value)| (key.clone(), Some(value.clone())))
            .collect();
        produce_many(&self.brokers, &self.topic("pending"), &records).await;
    }

    /// Sets a script on the scripts topic, as the API would.
    pub async fn put_script(&self, config_id: &str, code: &str) -> String {
        self.put_script_with_config(config_id, code, None).await
    }

    /// Sets a script with its `script_config` on the scripts topic.
    pub async fn put_script_with_config(
        &self,
        config_id: &str,
        code: &str,
        script_config: Option<serde_json::Value>,
    ) -> String {
        let hash = howk_processor::lua::script::script_hash(code);
        let mut value = serde_json::json!({
            "config_id": config_id, "lua_code": code, "hash": hash, "version": "1",
            "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z"
        });
        if let Some(script_config) = script_config {
            value["script_config"] = script_config;
        }
        self.produce(
            "scripts",
            config_id,
            Some(&serde_json::to_vec(&value).unwrap()),
        )
        .await;
        hash
    }

    /// [`put_script_with_config`](Self::put_script_with_config), then waits until the API
    /// serves the script: from then on the scripts table has it, and webhooks run it.
    pub async fn put_script_ready(
        &self,
        config_id: &str,
        code: &str,
        script_config: Option<serde_json::Value>,
    ) {
        self.put_script_with_config(config_id, code, script_config)
            .await;
        let url = self.api(&format!("/config/{config_id}/script"));
        super::wait_for(
            "the script in the table",
            Duration::from_secs(30),
            || async {
                let response = reqwest::get(&url).await.ok()?;
                response.status().is_success().then_some(())
            },
        )
        .await;
    }

    /// Whether `topic` (short name) has no committed record.
    pub fn tail_is_empty(&self, topic: &str) -> bool {
        let mut tail = self.tail(topic);
        tail.poll(Duration::from_secs(1));
        tail.records.is_empty()
    }

    /// A reader of one output topic (short name), committed records only.
    pub fn tail(&self, topic: &str) -> Tail {
        Tail::new(&self.brokers, &self.topic(topic))
    }

    /// The stderr of the latest start.
    pub fn last_log(&self) -> String {
        self.logs
            .last()
            .map(|log| std::fs::read_to_string(log).unwrap_or_default())
            .unwrap_or_default()
    }

    fn print_logs(&self) {
        for log in &self.logs {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(200).collect();
            eprintln!("---- {} (last lines) ----", log.display());
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

impl Drop for Howk {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_logs();
        }
        self.kill();
    }
}

/// A port nothing listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn produce_many(brokers: &str, topic: &str, records: &[(String, Option<Vec<u8>>)]) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("partitioner", "murmur2_random")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("message.max.bytes", "10000000")
        .create()
        .unwrap();
    let sends = records.iter().map(|(key, value)| {
        let mut record = FutureRecord::to(topic).key(key.as_str());
        if let Some(value) = value {
            record = record.payload(value.as_slice());
        }
        producer.send(record, Duration::from_secs(10))
    });
    for result in futures::future::join_all(sends).await {
        result.map_err(|(error, _)| error).expect("produce");
    }
}

/// How many `records` (results) have `outcome`.
pub fn count_outcome(records: &[(String, Vec<u8>)], outcome: &str) -> usize {
    let needle = format!(r#""outcome":"{outcome}""#);
    records
        .iter()
        .filter(|(_, value)| String::from_utf8_lossy(value).contains(&needle))
        .count()
}

/// Reads every partition of a topic from the beginning, read_committed.
pub struct Tail {
    consumer: BaseConsumer,
    pub records: Vec<(String, Vec<u8>)>,
}

impl Tail {
    pub fn new(brokers: &str, topic: &str) -> Self {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", unique("tail"))
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .create()
            .unwrap();
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .unwrap();
        let partitions = metadata.topics()[0].partitions().len() as i32;
        let mut list = TopicPartitionList::new();
        for partition in 0..partitions {
            list.add_partition_offset(topic, partition, Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&list).unwrap();
        Self {
            consumer,
            records: Vec::new(),
        }
    }

    /// Reads what is there now (up to `wait` for the first record).
    pub fn poll(&mut self, wait: Duration) {
        let mut timeout = wait;
        while let Some(message) = self.consumer.poll(timeout) {
            let message = message.expect("read output topic");
            let key = String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned();
            self.records
                .push((key, message.payload().unwrap_or_default().to_vec()));
            timeout = Duration::from_millis(50);
        }
    }

    /// Polls until `done(records)` holds, failing after `deadline`.
    pub fn until(
        &mut self,
        what: &str,
        deadline: Duration,
        mut done: impl FnMut(&[(String, Vec<u8>)]) -> bool,
    ) {
        let start = Instant::now();
        loop {
            self.poll(Duration::from_millis(100));
            if done(&self.records) {
                return;
            }
            assert!(
                start.elapsed() < deadline,
                "timed out after {deadline:?} waiting for {what} (have {} records)",
                self.records.len()
            );
        }
    }

    /// The records as JSON values.
    pub fn json(&self) -> Vec<serde_json::Value> {
        self.records
            .iter()
            .map(|(_, value)| serde_json::from_slice(value).expect("output is JSON"))
            .collect()
    }

    /// JSON records whose `field` equals `value`.
    pub fn with(&self, field: &str, value: &str) -> Vec<serde_json::Value> {
        self.json()
            .into_iter()
            .filter(|record| record[field] == value)
            .collect()
    }

    /// Count of records per key.
    pub fn per_key(&self) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for (key, _) in &self.records {
            *counts.entry(key.clone()).or_default() += 1;
        }
        counts
    }
}
