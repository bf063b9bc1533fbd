//! `howk bench --replay`: the replay jobs' benchmark, on Kafka. Writes N webhooks to a fresh
//! `pending` topic and a dead letter for each (pointing at its record, as the deliver stage
//! writes them), then times a dry run of a candidate script over the N pending records and a
//! re-drive of the N dead letters, unpaced. No topology runs: this measures the jobs.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use howk_topology::log::kafka::KafkaLog;
use howk_topology::log::{Log, OutRecord, ReadEvent, TopicPartition, TopicReader};
use howk_topology::replay::dry_run::{DryRunSource, dry_run};
use howk_topology::replay::{RedriveFilter, RedriveSettings, new_job, redrive};

use crate::config::HowkConfig;

const CURRENT: &str = r#"request.headers["X-Bench-Id"] = metadata.webhook_id"#;
const CANDIDATE: &str = r#"request.headers["X-Bench-Id"] = metadata.webhook_id
request.headers["X-Tenant"] = metadata.config_id"#;

/// Writes the webhooks and their dead letters, then runs both jobs.
pub fn run(count: usize, configs: usize, config: &HowkConfig) -> anyhow::Result<()> {
    let log = Arc::new(KafkaLog::new(config.kafka.clone()));
    let topics = &config.kafka.topics;
    let (pending, deadletter, scripts_topic): (Arc<str>, Arc<str>, Arc<str>) = (
        Arc::from(topics.pending.as_str()),
        Arc::from(topics.deadletter.as_str()),
        Arc::from(topics.scripts.as_str()),
    );
    let hash = howk_processor::lua::script::script_hash(CURRENT);
    let scripts: Vec<OutRecord> = (0..configs)
        .map(|c| OutRecord {
            topic: Arc::clone(&scripts_topic),
            partition: None,
            key: format!("bench{c}").into_bytes(),
            value: Some(
                serde_json::json!({
                    "config_id": format!("bench{c}"), "lua_code": CURRENT, "hash": hash,
                    "version": "1", "created_at": "2026-01-01T00:00:00Z",
                    "updated_at": "2026-01-01T00:00:00Z",
                })
                .to_string()
                .into_bytes(),
            ),
        })
        .collect();
    log.produce(scripts)?;

    let started = Instant::now();
    for first in (0..count).step_by(2000) {
        let batch = (first..(first + 2000).min(count))
            .map(|i| OutRecord {
                topic: Arc::clone(&pending),
                partition: None,
                key: format!("bench{}", i % configs).into_bytes(),
                value: Some(
                    format!(
                        r#"{{"endpoint":"https://bench.invalid/e/{}","payload":{{"n":{i},"price":1.50,"pad":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}},"signing_secret":"s3cret"}}"#,
                        i % 50
                    )
                    .into_bytes(),
                ),
            })
            .collect();
        log.produce(batch)?;
    }
    println!(
        "wrote {count} pending webhooks in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // A dead letter per webhook, with its origin, as the deliver stage writes them.
    let started = Instant::now();
    let mut reader = log.reader()?;
    let mut letters = Vec::with_capacity(2000);
    let mut written = 0;
    for partition in 0..log.partitions(&pending)? {
        let tp = TopicPartition::new(&pending, partition);
        reader.assign(&[(tp.clone(), 0)])?;
        // To the end of the partition (or 5 s without a record).
        while let Some(ReadEvent::Record(record)) = reader.poll(Duration::from_secs(5))? {
            let id = howk_processor::ids::WebhookId::from_offset(
                &record.topic,
                record.partition,
                record.offset,
            );
            let config_id = String::from_utf8_lossy(record.key.as_deref().unwrap_or_default());
            let letter = serde_json::json!({
                "webhook": {"id": id.as_str(), "config_id": config_id, "endpoint": "https://bench.invalid/e"},
                "reason_type": "non_retryable_status", "reason": "HTTP 400", "attempts": 1,
                "time": "2026-12-02T00:00:00Z",
                "origin": {"topic": &*pending, "partition": record.partition, "offset": record.offset},
            });
            letters.push(OutRecord {
                topic: Arc::clone(&deadletter),
                partition: None,
                key: id.as_str().as_bytes().to_vec(),
                value: Some(letter.to_string().into_bytes()),
            });
            if letters.len() == 2000 {
                written += letters.len();
                log.produce(std::mem::take(&mut letters))?;
            }
        }
    }
    written += letters.len();
    log.produce(letters)?;
    println!(
        "wrote {written} dead letters in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let table = howk_topology::scripts_table::ScriptsTable::in_memory();
    let loader = howk_topology::scripts_table::spawn_loader(
        Arc::clone(&log),
        table.clone(),
        howk_topology::scripts_table::LoaderConfig {
            topic: Arc::clone(&scripts_topic),
            checkpoint: None,
        },
    )?;
    anyhow::ensure!(
        table.wait_ready_blocking(Duration::from_secs(60)),
        "the scripts table did not load"
    );
    let mut engine = howk_processor::lua::LuaEngine::new(
        config
            .lua
            .engine_settings(howk_processor::lua::template::process_env()),
    );
    let candidate = howk_processor::lua::Script::new(CANDIDATE, None);
    let report = dry_run(
        &*log,
        &pending,
        &table,
        &candidate,
        &mut engine,
        &DryRunSource::default(),
        config.processing.max_record_bytes,
        |_, _| true,
    )?;
    println!(
        "dry run: {} webhooks in {:.1} s: {:.0} webhooks/s ({} changed, {} unchanged, {} errored)",
        report.selected,
        report.seconds,
        report.selected as f64 / report.seconds,
        report.changed,
        report.unchanged,
        report.errored
    );
    table.stop();
    let _ = loader.join();

    let settings = RedriveSettings::new(&config.kafka, 0.0);
    let started = Instant::now();
    let progress = redrive(
        &*log,
        &settings,
        new_job(RedriveFilter::default(), false),
        None,
        &AtomicBool::new(false),
        |_| {},
    )?;
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "re-drive: {} dead letters in {seconds:.1} s: {:.0} letters/s ({} enqueued, {} skipped)",
        progress.matched,
        progress.matched as f64 / seconds,
        progress.enqueued,
        progress.skipped
    );
    Ok(())
}
