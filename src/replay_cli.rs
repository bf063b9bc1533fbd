//! `howk replay`: replay jobs from the command line, on Kafka.
//!
//! - `howk replay deadletter [filters]`: re-drive the dead letters the filters match; a progress
//!   bar with rate and ETA while it runs, a summary table at the end. The job id it prints
//!   resumes it after a kill: `howk replay resume JOB_ID`.
//! - `howk replay status [JOB_ID]`: a job's progress (all jobs without an id).

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use howk_topology::log::kafka::KafkaLog;
use howk_topology::replay::{
    JobProgress, RedriveFilter, RedriveSettings, find_progress, list_progress, new_job, redrive,
};

use crate::config::HowkConfig;

#[derive(Debug, Subcommand)]
pub enum ReplayCommand {
    /// Re-drive dead letters: each original webhook enqueued again with its id, its exact
    /// bytes and secrets, attempts from the first.
    Deadletter(DeadletterArgs),
    /// Reprocess: enqueue webhooks of howk.pending again (a partition/offset range or a time
    /// range), each with its id, exact bytes and secrets, attempts from the first.
    Pending(PendingArgs),
    /// Resume a job that was stopped or killed, from its last committed batch.
    Resume {
        job_id: String,
        #[command(flatten)]
        pace: Pace,
    },
    /// Show a job's progress, or every job's.
    Status { job_id: Option<String> },
    /// Run a candidate script (not stored) beside each webhook's current script over the
    /// webhooks of howk.pending, with no HTTP call: unchanged, changed or errored, per record
    /// and in sum.
    DryRun(DryRunArgs),
}

#[derive(Debug, Args)]
pub struct DryRunArgs {
    /// The candidate script's file.
    #[arg(long)]
    candidate: std::path::PathBuf,
    /// The candidate's script_config as JSON (default: each current script's).
    #[arg(long)]
    candidate_config: Option<String>,
    /// Only these config_ids (repeatable).
    #[arg(long = "config-id")]
    config_ids: Vec<String>,
    /// Only these namespaces (repeatable).
    #[arg(long = "namespace")]
    namespaces: Vec<String>,
    /// Only this partition of howk.pending.
    #[arg(long)]
    partition: Option<i32>,
    /// From this offset (of each partition read).
    #[arg(long)]
    from_offset: Option<i64>,
    /// Up to this offset, excluded.
    #[arg(long)]
    to_offset: Option<i64>,
    /// Records produced at or after this time (RFC 3339).
    #[arg(long)]
    since: Option<String>,
    /// Records produced before this time (RFC 3339).
    #[arg(long)]
    until: Option<String>,
    /// Most webhooks to run.
    #[arg(long)]
    limit: Option<u64>,
    /// Write one JSON line per webhook here.
    #[arg(long)]
    out: Option<std::path::PathBuf>,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct Pace {
    /// Most webhooks enqueued per second (0: unpaced); default `replay.max_rate`.
    #[arg(long)]
    max_rate: Option<f64>,
    /// Dead letters re-driven per transaction.
    #[arg(long, default_value_t = howk_topology::replay::BATCH)]
    batch: usize,
}

#[derive(Debug, Args)]
pub struct DeadletterArgs {
    /// Only these config_ids (repeatable).
    #[arg(long = "config-id")]
    config_ids: Vec<String>,
    /// Only these namespaces (repeatable).
    #[arg(long = "namespace")]
    namespaces: Vec<String>,
    /// Only these reason types, e.g. `exhausted`, `non_retryable_status` (repeatable);
    /// `invalid_record` only when named.
    #[arg(long = "reason")]
    reasons: Vec<String>,
    /// Dead-lettered at or after this time (RFC 3339).
    #[arg(long)]
    since: Option<String>,
    /// Dead-lettered before this time (RFC 3339).
    #[arg(long)]
    until: Option<String>,
    /// Only these webhook ids (repeatable).
    #[arg(long = "id")]
    webhook_ids: Vec<String>,
    /// When an original is gone from retention, enqueue the dead letter's redacted copy instead
    /// (without its secret headers and signing secret: unsigned).
    #[arg(long)]
    from_dead_letter_copy: bool,
    /// The script each webhook runs: current, as-of (its config's version at its created_at),
    /// or a version's hash.
    #[arg(long, default_value = "current")]
    script: String,
    #[command(flatten)]
    pace: Pace,
}

#[derive(Debug, Args)]
pub struct PendingArgs {
    /// Only these config_ids (repeatable).
    #[arg(long = "config-id")]
    config_ids: Vec<String>,
    /// Only these namespaces (repeatable).
    #[arg(long = "namespace")]
    namespaces: Vec<String>,
    /// Only these partitions (repeatable).
    #[arg(long = "partition")]
    partitions: Vec<i32>,
    /// From this offset of each partition read.
    #[arg(long)]
    from_offset: Option<i64>,
    /// Up to this offset, excluded.
    #[arg(long)]
    to_offset: Option<i64>,
    /// Records written at or after this time (RFC 3339; found with offsets-for-times).
    #[arg(long)]
    since: Option<String>,
    /// Records written before this time (RFC 3339).
    #[arg(long)]
    until: Option<String>,
    /// The script each webhook runs: current, as-of (its config's version at its created_at),
    /// or a version's hash.
    #[arg(long, default_value = "current")]
    script: String,
    #[command(flatten)]
    pace: Pace,
}

pub async fn run(command: ReplayCommand, config: &HowkConfig) -> anyhow::Result<()> {
    let log = Arc::new(KafkaLog::new(config.kafka.clone()));
    match command {
        ReplayCommand::Deadletter(args) => {
            let filter = RedriveFilter {
                config_ids: args.config_ids,
                namespaces: args.namespaces,
                reasons: args.reasons,
                since: args.since,
                until: args.until,
                webhook_ids: args.webhook_ids,
            };
            let mut job = new_job(filter, args.from_dead_letter_copy);
            job.script = args.script;
            drive(log, config, job, &args.pace).await
        }
        ReplayCommand::Pending(args) => {
            let filter = howk_topology::replay::PendingFilter {
                config_ids: args.config_ids,
                namespaces: args.namespaces,
                partitions: args.partitions,
                from_offset: args.from_offset,
                to_offset: args.to_offset,
                since: args.since,
                until: args.until,
            };
            let job = howk_topology::replay::new_reprocess(filter, args.script);
            drive(log, config, job, &args.pace).await
        }
        ReplayCommand::Resume { job_id, pace } => {
            let replays = config.kafka.topics.replays.clone();
            let found = {
                let (log, job_id) = (Arc::clone(&log), job_id.clone());
                tokio::task::spawn_blocking(move || find_progress(&*log, &replays, &job_id))
                    .await??
            };
            let job = found.with_context(|| format!("no replay job {job_id}"))?;
            drive(log, config, job, &pace).await
        }
        ReplayCommand::DryRun(args) => dry_run(log, config, args).await,
        ReplayCommand::Status { job_id } => {
            let replays = config.kafka.topics.replays.clone();
            let jobs = {
                let log = Arc::clone(&log);
                tokio::task::spawn_blocking(move || list_progress(&*log, &replays)).await??
            };
            let jobs: Vec<JobProgress> = jobs
                .into_iter()
                .filter(|job| job_id.as_ref().is_none_or(|id| *id == job.job_id))
                .collect();
            anyhow::ensure!(!jobs.is_empty() || job_id.is_none(), "no such replay job");
            for job in &jobs {
                if job.kind == "dry_run" {
                    // A dry run's document is its report: shown whole.
                    let replays = config.kafka.topics.replays.clone();
                    let (log, id) = (Arc::clone(&log), job.job_id.clone());
                    let document = tokio::task::spawn_blocking(move || {
                        howk_topology::replay::find_value(&*log, &replays, &id)
                    })
                    .await??;
                    println!("{}\n", serde_json::to_string_pretty(&document)?);
                } else {
                    print_summary(job);
                }
            }
            Ok(())
        }
    }
}

/// Runs the job on a blocking thread with a progress bar, then prints its summary.
async fn drive(
    log: Arc<KafkaLog>,
    config: &HowkConfig,
    job: JobProgress,
    pace: &Pace,
) -> anyhow::Result<()> {
    let max_rate = pace.max_rate.unwrap_or(config.replay.max_rate);
    let mut settings = RedriveSettings::new(&config.kafka, max_rate);
    let mut job = job;
    job.max_rate = max_rate;
    job.batch = settings.batch;
    settings.batch = pace.batch.max(1);
    let bar = indicatif::ProgressBar::new(job.total().max(1));
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} letters ({per_sec}, ETA {eta}) {msg}",
        )
        .expect("a valid template"),
    );
    howk_topology::replay::check_script_choice(&job.script)?;
    if job.ends.is_empty() {
        eprintln!(
            "replay job {} (resume it with `howk replay resume {}`)",
            job.job_id, job.job_id
        );
    }
    // An as-of choice reads the versions the scripts had.
    let scripts = if matches!(job.script.as_str(), "as-of" | "as_of") {
        let table = howk_topology::scripts_table::ScriptsTable::in_memory();
        howk_topology::scripts_table::spawn_loader(
            Arc::clone(&log),
            table.clone(),
            howk_topology::scripts_table::LoaderConfig {
                topic: Arc::from(config.kafka.topics.scripts.as_str()),
                checkpoint: None,
            },
        )?;
        let waiting = table.clone();
        let ready = tokio::task::spawn_blocking(move || {
            waiting.wait_ready_blocking(std::time::Duration::from_secs(120))
        })
        .await?;
        anyhow::ensure!(ready, "the scripts table did not load within 2 minutes");
        Some(table)
    } else {
        None
    };
    let cancel = Arc::new(AtomicBool::new(false));
    {
        let cancel = Arc::clone(&cancel);
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                cancel.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        });
    }
    let finished = {
        let bar = bar.clone();
        tokio::task::spawn_blocking(move || {
            redrive(
                &*log,
                &settings,
                job,
                scripts.as_ref(),
                &cancel,
                |progress| {
                    bar.set_length(progress.total().max(1));
                    bar.set_position(progress.scanned);
                    bar.set_message(format!(
                        "{} matched, {} enqueued, {} skipped",
                        progress.matched, progress.enqueued, progress.skipped
                    ));
                },
            )
        })
        .await??
    };
    bar.finish_and_clear();
    print_summary(&finished);
    Ok(())
}

fn print_summary(job: &JobProgress) {
    println!("job        {}", job.job_id);
    println!("kind       {}", job.kind);
    println!("state      {:?}", job.state);
    println!("started    {}", job.started_at);
    println!("updated    {}", job.updated_at);
    println!("scanned    {:>10}", job.scanned);
    println!("matched    {:>10}", job.matched);
    println!("enqueued   {:>10}", job.enqueued);
    if job.unsigned > 0 {
        println!(
            "  unsigned {:>10}  (from dead-letter copies: no signing secret)",
            job.unsigned
        );
    }
    println!("skipped    {:>10}", job.skipped);
    for item in &job.skipped_sample {
        println!("  {}  {}", item.webhook_id, item.reason);
    }
    if let Some(error) = &job.error {
        println!("error      {error}");
    }
    println!();
}

fn rfc3339_ms(text: &Option<String>) -> anyhow::Result<Option<i64>> {
    text.as_deref()
        .map(|t| {
            chrono::DateTime::parse_from_rfc3339(t)
                .map(|t| t.timestamp_millis())
                .with_context(|| format!("{t:?} is not RFC 3339"))
        })
        .transpose()
}

/// `howk replay dry-run`: loads the scripts table, then compares on a blocking thread.
async fn dry_run(log: Arc<KafkaLog>, config: &HowkConfig, args: DryRunArgs) -> anyhow::Result<()> {
    use howk_topology::replay::dry_run::{DryRunSource, dry_run};
    use std::io::Write as _;

    let code = std::fs::read_to_string(&args.candidate)
        .with_context(|| format!("cannot read {}", args.candidate.display()))?;
    let candidate_config = args
        .candidate_config
        .as_deref()
        .map(serde_json::from_str::<serde_json::Value>)
        .transpose()
        .context("--candidate-config is not JSON")?;
    let candidate = howk_processor::lua::Script::new(code, candidate_config);
    let source = DryRunSource {
        config_ids: args.config_ids,
        namespaces: args.namespaces,
        partition: args.partition,
        from_offset: args.from_offset,
        to_offset: args.to_offset,
        since_ms: rfc3339_ms(&args.since)?,
        until_ms: rfc3339_ms(&args.until)?,
        limit: args.limit,
    };
    let scripts = howk_topology::scripts_table::ScriptsTable::in_memory();
    let loader = howk_topology::scripts_table::spawn_loader(
        Arc::clone(&log),
        scripts.clone(),
        howk_topology::scripts_table::LoaderConfig {
            topic: Arc::from(config.kafka.topics.scripts.as_str()),
            checkpoint: None,
        },
    )?;
    let mut out = args
        .out
        .as_ref()
        .map(|path| {
            std::fs::File::create(path)
                .map(std::io::BufWriter::new)
                .with_context(|| format!("cannot write {}", path.display()))
        })
        .transpose()?;
    let settings = config
        .lua
        .engine_settings(howk_processor::lua::template::process_env());
    let pending = config.kafka.topics.pending.clone();
    let max_record_bytes = config.processing.max_record_bytes;
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {pos} webhooks ({per_sec}) {msg}",
        )
        .expect("a valid template"),
    );
    let report = {
        let (bar, scripts) = (bar.clone(), scripts.clone());
        tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            anyhow::ensure!(
                scripts.wait_ready_blocking(std::time::Duration::from_secs(120)),
                "the scripts table did not load within 2 minutes"
            );
            let mut engine = howk_processor::lua::LuaEngine::new(settings);
            let mut write_error = None;
            let report = dry_run(
                &*log,
                &pending,
                &scripts,
                &candidate,
                &mut engine,
                &source,
                max_record_bytes,
                |comparison, report| {
                    bar.set_position(report.selected);
                    bar.set_message(format!(
                        "{} changed, {} errored",
                        report.changed, report.errored
                    ));
                    if let Some(out) = out.as_mut() {
                        let line = serde_json::to_string(comparison).expect("serializes");
                        if let Err(error) = writeln!(out, "{line}") {
                            write_error = Some(error);
                            return false;
                        }
                    }
                    true
                },
            )?;
            if let Some(error) = write_error {
                return Err(error).context("writing --out");
            }
            if let Some(mut out) = out {
                out.flush().context("writing --out")?;
            }
            Ok(report)
        })
        .await??
    };
    scripts.stop();
    let _ = tokio::task::spawn_blocking(move || loader.join()).await;
    bar.finish_and_clear();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!("scanned    {:>10}", report.scanned);
    println!("selected   {:>10}", report.selected);
    println!("unchanged  {:>10}", report.unchanged);
    println!("changed    {:>10}", report.changed);
    println!("errored    {:>10}", report.errored);
    for (kind, count) in &report.error_types {
        println!("  {kind:<40} {count:>10}");
    }
    println!(
        "{:.1} s, {:.0} webhooks/s",
        report.seconds,
        report.selected as f64 / report.seconds.max(1e-9)
    );
    for sample in &report.samples {
        println!("\n{}", serde_json::to_string_pretty(sample)?);
    }
    Ok(())
}
