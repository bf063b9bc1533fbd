//! Replay jobs run by a server process (`howk run`, `howk dev`), started, watched and cancelled
//! through the admin API (`/admin/replays`).
//!
//! A re-drive runs on its own thread with the same code as `howk replay deadletter`, its
//! progress committed to `howk.replays` with each batch; the job records the instance that runs
//! it (`owner`), and an instance that starts again resumes the re-drives it owned that were
//! still running — from their last committed batch, so nothing is enqueued twice. A dry run
//! keeps its report in memory while it runs and writes it to `howk.replays` when it ends; a dry
//! run interrupted by a restart is reported `failed` there (it enqueues nothing, so running it
//! again is harmless).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use howk_processor::lua::{EngineSettings, LuaEngine, Script};
use serde::Deserialize;

use super::dry_run::{DryRunReport, DryRunSource, dry_run};
use super::{
    JobProgress, JobState, PendingFilter, RedriveFilter, RedriveSettings, ReplayError, find_value,
    list_progress, millis, new_job, new_reprocess, redrive,
};
use crate::config::KafkaConfig;
use crate::log::{Log, OutRecord};
use crate::scripts_table::ScriptsTable;

/// What `POST /admin/replays` asks for.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum JobRequest {
    Redrive {
        #[serde(default)]
        filter: RedriveFilter,
        #[serde(default)]
        from_dead_letter_copy: bool,
        /// Webhooks per second; default `replay.max_rate`.
        max_rate: Option<f64>,
        /// Letters per transaction; default 500.
        batch: Option<usize>,
        /// `current` (default), `as-of`, or a version's hash.
        #[serde(default)]
        script: String,
    },
    Reprocess {
        #[serde(default)]
        filter: PendingFilter,
        #[serde(default)]
        script: String,
        max_rate: Option<f64>,
        batch: Option<usize>,
    },
    DryRun {
        lua_code: String,
        script_config: Option<serde_json::Value>,
        #[serde(default)]
        source: DryRunSourceSpec,
    },
}

/// [`DryRunSource`] as the API takes it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DryRunSourceSpec {
    pub config_ids: Vec<String>,
    pub namespaces: Vec<String>,
    pub partition: Option<i32>,
    pub from_offset: Option<i64>,
    pub to_offset: Option<i64>,
    /// RFC 3339.
    pub since: Option<String>,
    pub until: Option<String>,
    pub limit: Option<u64>,
}

struct Running {
    cancel: Arc<AtomicBool>,
    /// The latest progress document.
    status: Arc<Mutex<serde_json::Value>>,
}

/// The replay jobs of this process.
pub struct ReplayJobs<L: Log> {
    log: Arc<L>,
    kafka: KafkaConfig,
    scripts: ScriptsTable,
    engine_settings: EngineSettings,
    max_record_bytes: usize,
    instance_id: String,
    default_max_rate: f64,
    running: Mutex<HashMap<String, Running>>,
}

impl<L: Log> ReplayJobs<L> {
    pub fn new(
        log: Arc<L>,
        kafka: KafkaConfig,
        scripts: ScriptsTable,
        engine_settings: EngineSettings,
        max_record_bytes: usize,
        instance_id: String,
        default_max_rate: f64,
    ) -> Arc<Self> {
        Arc::new(Self {
            log,
            kafka,
            scripts,
            engine_settings,
            max_record_bytes,
            instance_id,
            default_max_rate,
            running: Mutex::new(HashMap::new()),
        })
    }

    /// Starts a job: its id.
    pub fn start(self: &Arc<Self>, request: JobRequest) -> Result<String, ReplayError> {
        match request {
            JobRequest::Reprocess {
                filter,
                script,
                max_rate,
                batch,
            } => {
                millis(&filter.since)?;
                millis(&filter.until)?;
                super::check_script_choice(&script)?;
                Ok(self.launch(new_reprocess(filter, script), max_rate, batch))
            }
            JobRequest::Redrive {
                filter,
                from_dead_letter_copy,
                max_rate,
                batch,
                script,
            } => {
                // Checked now, so a bad time is a 400, not a failed job.
                millis(&filter.since)?;
                millis(&filter.until)?;
                super::check_script_choice(&script)?;
                let mut job = new_job(filter, from_dead_letter_copy);
                job.script = script;
                Ok(self.launch(job, max_rate, batch))
            }
            JobRequest::DryRun {
                lua_code,
                script_config,
                source,
            } => {
                let source = DryRunSource {
                    config_ids: source.config_ids,
                    namespaces: source.namespaces,
                    partition: source.partition,
                    from_offset: source.from_offset,
                    to_offset: source.to_offset,
                    since_ms: millis(&source.since)?,
                    until_ms: millis(&source.until)?,
                    limit: source.limit,
                };
                let candidate = Script::new(lua_code, script_config);
                LuaEngine::new(self.engine_settings.clone())
                    .validate(&candidate.code)
                    .map_err(|error| {
                        ReplayError::Invalid(format!("the candidate script: {}", error.message))
                    })?;
                let id = format!("rj_{}", ulid::Ulid::new());
                self.spawn_dry_run(id.clone(), candidate, source);
                Ok(id)
            }
        }
    }

    /// Runs a re-drive or reprocess owned by this instance: its id.
    fn launch(
        self: &Arc<Self>,
        mut job: JobProgress,
        max_rate: Option<f64>,
        batch: Option<usize>,
    ) -> String {
        job.owner = self.instance_id.clone();
        job.max_rate = max_rate.unwrap_or(self.default_max_rate);
        job.batch = batch.unwrap_or(super::BATCH).max(1);
        let id = job.job_id.clone();
        self.spawn_redrive(job);
        id
    }

    /// A job's latest progress: from memory while it runs here, else from `howk.replays`.
    pub fn status(&self, job_id: &str) -> Result<Option<serde_json::Value>, ReplayError> {
        if let Some(running) = self.running.lock().expect("jobs lock").get(job_id) {
            return Ok(Some(running.status.lock().expect("status lock").clone()));
        }
        find_value(&*self.log, &self.kafka.topics.replays, job_id)
    }

    /// Asks a running job to stop between batches; false when it does not run here.
    pub fn cancel(&self, job_id: &str) -> bool {
        match self.running.lock().expect("jobs lock").get(job_id) {
            // Its thread may still be finishing a job that has ended.
            Some(running) if running.status.lock().expect("status lock")["state"] == "running" => {
                running.cancel.store(true, Ordering::Relaxed);
                true
            }
            _ => false,
        }
    }

    /// Resumes the re-drives this instance owned that were still running, and marks its
    /// interrupted dry runs failed. Called once at start.
    pub fn resume_owned(self: &Arc<Self>) -> Result<usize, ReplayError> {
        let mut resumed = 0;
        for job in list_progress(&*self.log, &self.kafka.topics.replays)? {
            if job.owner != self.instance_id || job.state != JobState::Running {
                continue;
            }
            if job.kind == "redrive" || job.kind == "reprocess" {
                tracing::info!(
                    job_id = job.job_id,
                    "resuming a re-drive this instance owned"
                );
                self.spawn_redrive(job);
                resumed += 1;
            } else {
                let mut value = serde_json::to_value(&job).expect("progress serializes");
                value["state"] = "failed".into();
                value["error"] = "interrupted by a restart; run it again".into();
                self.write(&job.job_id, &value)?;
            }
        }
        Ok(resumed)
    }

    fn write(&self, job_id: &str, value: &serde_json::Value) -> Result<(), ReplayError> {
        self.log.produce(vec![OutRecord {
            topic: Arc::from(self.kafka.topics.replays.as_str()),
            partition: None,
            key: job_id.as_bytes().to_vec(),
            value: Some(serde_json::to_vec(value).expect("a JSON value serializes")),
        }])?;
        Ok(())
    }

    fn track(&self, job_id: &str, first: serde_json::Value) -> Running {
        let running = Running {
            cancel: Arc::new(AtomicBool::new(false)),
            status: Arc::new(Mutex::new(first)),
        };
        self.running.lock().expect("jobs lock").insert(
            job_id.to_owned(),
            Running {
                cancel: Arc::clone(&running.cancel),
                status: Arc::clone(&running.status),
            },
        );
        running
    }

    fn spawn_redrive(self: &Arc<Self>, job: JobProgress) {
        let jobs = Arc::clone(self);
        let job_id = job.job_id.clone();
        let running = self.track(&job_id, serde_json::to_value(&job).expect("serializes"));
        std::thread::Builder::new()
            .name("howk-replay".into())
            .spawn(move || {
                let mut settings = RedriveSettings::new(&jobs.kafka, job.max_rate);
                if job.batch > 0 {
                    settings.batch = job.batch;
                }
                let status = Arc::clone(&running.status);
                let outcome = redrive(
                    &*jobs.log,
                    &settings,
                    job.clone(),
                    Some(&jobs.scripts),
                    &running.cancel,
                    |p| {
                        *status.lock().expect("status lock") =
                            serde_json::to_value(p).expect("progress serializes");
                    },
                );
                if let Err(error) = outcome {
                    tracing::error!(job_id = job.job_id, %error, "re-drive failed");
                    // The last committed batch stands; the job is marked failed (resumable by
                    // `howk replay resume`).
                    let mut failed = status.lock().expect("status lock").clone();
                    failed["state"] = "failed".into();
                    failed["error"] = error.to_string().into();
                    let _ = jobs.write(&job.job_id, &failed);
                }
                jobs.running.lock().expect("jobs lock").remove(&job.job_id);
            })
            .expect("spawn a replay thread");
    }

    fn spawn_dry_run(self: &Arc<Self>, job_id: String, candidate: Script, source: DryRunSource) {
        let first = self.dry_run_document(&job_id, "running", &DryRunReport::default(), None);
        let running = self.track(&job_id, first.clone());
        if let Err(error) = self.write(&job_id, &first) {
            tracing::warn!(job_id, %error, "cannot record the dry run's start on howk.replays");
        }
        let jobs = Arc::clone(self);
        std::thread::Builder::new()
            .name("howk-dry-run".into())
            .spawn(move || {
                let status = Arc::clone(&running.status);
                let mut engine = LuaEngine::new(jobs.engine_settings.clone());
                let outcome = dry_run(
                    &*jobs.log,
                    &jobs.kafka.topics.pending,
                    &jobs.scripts,
                    &candidate,
                    &mut engine,
                    &source,
                    jobs.max_record_bytes,
                    |_, report| {
                        if report.selected % 100 == 0 {
                            *status.lock().expect("status lock") =
                                jobs.dry_run_document(&job_id, "running", report, None);
                        }
                        !running.cancel.load(Ordering::Relaxed)
                    },
                );
                let end = match outcome {
                    Ok(report) => {
                        let state = if running.cancel.load(Ordering::Relaxed) {
                            "cancelled"
                        } else {
                            "done"
                        };
                        jobs.dry_run_document(&job_id, state, &report, None)
                    }
                    // The report as far as it got.
                    Err(error) => {
                        let mut failed = status.lock().expect("status lock").clone();
                        failed["state"] = "failed".into();
                        failed["error"] = error.to_string().into();
                        failed
                    }
                };
                *status.lock().expect("status lock") = end.clone();
                if let Err(error) = jobs.write(&job_id, &end) {
                    tracing::error!(job_id, %error, "cannot record the dry run's report");
                }
                jobs.running.lock().expect("jobs lock").remove(&job_id);
            })
            .expect("spawn a dry-run thread");
    }

    /// A dry run's document on `howk.replays` and at `GET /admin/replays/:id`.
    fn dry_run_document(
        &self,
        job_id: &str,
        state: &str,
        report: &DryRunReport,
        error: Option<String>,
    ) -> serde_json::Value {
        serde_json::json!({
            "job_id": job_id, "kind": "dry_run", "state": state, "owner": self.instance_id,
            "report": report, "error": error,
        })
    }
}
