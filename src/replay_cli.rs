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
    /// Resume a job that was stopped or killed, from its last committed batch.
    Resume {
        job_id: String,
        #[command(flatten)]
        pace: Pace,
    },
    /// Show a job's progress, or every job's.
    Status { job_id: Option<String> },
}

#[derive(Debug, Args)]
pub struct Pace {
    /// Most webhooks enqueued per second (0: unpaced).
    #[arg(long, default_value_t = 1000.0)]
    max_rate: f64,
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
            let job = new_job(filter, args.from_dead_letter_copy);
            eprintln!(
                "replay job {} (resume it with `howk replay resume {}`)",
                job.job_id, job.job_id
            );
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
        ReplayCommand::Status { job_id } => {
            let replays = config.kafka.topics.replays.clone();
            let jobs =
                tokio::task::spawn_blocking(move || list_progress(&*log, &replays)).await??;
            let jobs: Vec<JobProgress> = jobs
                .into_iter()
                .filter(|job| job_id.as_ref().is_none_or(|id| *id == job.job_id))
                .collect();
            anyhow::ensure!(!jobs.is_empty() || job_id.is_none(), "no such replay job");
            for job in &jobs {
                print_summary(job);
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
    let mut settings = RedriveSettings::new(&config.kafka, pace.max_rate);
    settings.batch = pace.batch.max(1);
    let bar = indicatif::ProgressBar::new(job.total().max(1));
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} letters ({per_sec}, ETA {eta}) {msg}",
        )
        .expect("a valid template"),
    );
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
            redrive(&*log, &settings, job, &cancel, |progress| {
                bar.set_length(progress.total().max(1));
                bar.set_position(progress.scanned);
                bar.set_message(format!(
                    "{} matched, {} enqueued, {} skipped",
                    progress.matched, progress.enqueued, progress.skipped
                ));
            })
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
