//! Deliver (`howk.delivery`, keyed by endpoint): circuit breaker → scripts-table join → Lua →
//! sign → HTTP → classify, then a result, and a retry or a dead letter (SPEC §5).
//!
//! Concurrency: attempts run as tokio tasks, concurrent across (config_id, endpoint) pairs and
//! one at a time within a pair, so first attempts leave in the order accepted per pair. A pair's
//! queue lives here; its head is the running attempt. Every record is deferred and finished by
//! its [`Completion`](crate::processor::Completion); the task holds back outputs behind
//! unfinished records, so offsets commit only past finished work.
//!
//! The circuit state (per endpoint) is local because the topic is keyed by endpoint; it is
//! written to `howk-circuit-changelog` as it changes. It is advisory: after a crash it may count
//! a failure whose record is delivered again, which only makes the breaker slightly early.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use howk_processor::delivery::attempt::{AttemptReport, ScriptChoice, run_attempt};
use howk_processor::delivery::client::DeliveryClient;
use howk_processor::delivery::decide::{CircuitEffect, DecideConfig, decide, result};
use howk_processor::lua::pool::EnginePool;
use howk_processor::lua::{PreviousError, ScriptError, ScriptErrorKind};
use howk_processor::policy::circuit::{Admission, CircuitBreakerConfig, CircuitState};
use howk_processor::record::Outcome;
use howk_processor::record::internal::DeliveryRecord;
use howk_state::rocks::RocksStore;
use howk_state::store::Store;

use super::{
    StageSettings, dead_letter_undecodable, open_task_store, send_dead_letter, send_result,
};
use crate::log::{ReaderFactory, Record, TopicPartition};
use crate::metrics::{ReasonLabel, metrics};
use crate::processor::{ChangelogEnds, CompletionSender, Context, Processor, TaskError};
use crate::restore::write_checkpoint;
use crate::scripts_table::ScriptsTable;

/// What every deliver task shares.
pub struct DeliverShared {
    pub settings: StageSettings,
    pub scripts: ScriptsTable,
    /// `None` when Lua is disabled.
    pub pool: Option<Arc<EnginePool>>,
    pub client: DeliveryClient,
    pub decide: DecideConfig,
    pub circuit: CircuitBreakerConfig,
    /// How long a webhook's `script_hash` fence waits for its version (`scripts.fence_timeout`).
    pub fence_timeout: Duration,
    /// Records a task holds before its partition is paused (`delivery.max_in_flight`).
    pub max_in_flight: usize,
    /// Where attempts run.
    pub runtime: tokio::runtime::Handle,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DeliverCounters {
    pub attempts: u64,
    pub delivered: u64,
    pub retries: u64,
    pub dead_letters: u64,
    pub circuit_holds: u64,
    pub invalid: u64,
}

/// A queue key: first attempts to one endpoint for one tenant go in order.
type PairKey = (String, String);

struct Job {
    offset: i64,
    record: DeliveryRecord,
}

/// How a job finished, sent back through the completion channel.
enum Done {
    Attempted {
        key: PairKey,
        report: AttemptReport,
        probe: bool,
    },
    CircuitOpen {
        key: PairKey,
        retry_at_ms: i64,
    },
}

pub struct DeliverProcessor {
    shared: Arc<DeliverShared>,
    partition: TopicPartition,
    changelog: TopicPartition,
    store: RocksStore,
    checkpoint: std::path::PathBuf,
    readers: ReaderFactory,
    /// Circuits read so far, by endpoint (the store is the durable copy).
    circuits: HashMap<String, CircuitState>,
    queues: HashMap<PairKey, VecDeque<Job>>,
    held: usize,
    completions: CompletionSender,
    /// Attempts running on the runtime, by input offset: aborted when the task ends, so a
    /// revoked incarnation's attempt never runs beside the next owner's for the same pair.
    running: HashMap<i64, tokio::task::AbortHandle>,
    pub counters: DeliverCounters,
}

impl Drop for DeliverProcessor {
    fn drop(&mut self) {
        // Closed, lost or failed: whatever is still running belongs to an incarnation that is
        // gone (its completions would be dropped anyway).
        for (_, attempt) in self.running.drain() {
            attempt.abort();
        }
        metrics().circuits_cached.dec_by(self.circuits.len() as i64);
    }
}

impl DeliverProcessor {
    pub fn open(
        shared: Arc<DeliverShared>,
        partition: TopicPartition,
        readers: ReaderFactory,
        completions: CompletionSender,
    ) -> Result<Self, TaskError> {
        let topic = shared.settings.topics.circuit_changelog.clone();
        let (opened, changelog) =
            open_task_store(&shared.settings, "circuit", &topic, &partition, &readers)?;
        Ok(Self {
            checkpoint: opened.checkpoint_path(),
            store: opened.store,
            shared,
            partition,
            changelog,
            readers,
            circuits: HashMap::new(),
            queues: HashMap::new(),
            held: 0,
            completions,
            running: HashMap::new(),
            counters: DeliverCounters::default(),
        })
    }

    /// The circuit of `endpoint` as the store has it.
    fn load_circuit(&self, endpoint: &str) -> Result<CircuitState, TaskError> {
        let mut state: CircuitState = self
            .store
            .get(endpoint.as_bytes())?
            .and_then(|bytes| postcard::from_bytes(&bytes).ok())
            .unwrap_or_default();
        // A probe recorded as in flight belonged to an earlier incarnation (crash, restart,
        // rebalance): its attempt is gone, so this task must be free to probe again, or the
        // endpoint would be held forever (review H1).
        state.release_probe();
        Ok(state)
    }

    /// Applies `change` to the circuit of `endpoint`, storing (and so changelogging) it only
    /// when it changed: a healthy endpoint's deliveries write nothing (measured: one changelog
    /// record per delivery otherwise).
    fn update_circuit<R>(
        &mut self,
        endpoint: &str,
        change: impl FnOnce(&mut CircuitState, &CircuitBreakerConfig) -> R,
    ) -> Result<R, TaskError> {
        let cached = self.circuits.remove(endpoint);
        let was_cached = cached.is_some();
        let mut circuit = match cached {
            Some(circuit) => circuit,
            None => self.load_circuit(endpoint)?,
        };
        let before = circuit.clone();
        let result = change(&mut circuit, &self.shared.circuit);
        if circuit != before {
            let bytes = postcard::to_stdvec(&circuit).expect("a circuit state serializes");
            self.store.put(endpoint.as_bytes(), &bytes);
        }
        // Only circuits with something to remember stay in memory: a task that has seen
        // millions of healthy endpoints must not hold them all (review M4).
        let keep = circuit != CircuitState::default();
        if keep {
            self.circuits.insert(endpoint.to_owned(), circuit);
        }
        metrics()
            .circuits_cached
            .inc_by(i64::from(keep) - i64::from(was_cached));
        Ok(result)
    }

    /// Starts the head job of `key`: held back by the circuit, or run.
    fn start(&mut self, key: &PairKey, now_ms: i64) -> Result<(), TaskError> {
        let Some(job) = self.queues.get(key).and_then(|queue| queue.front()) else {
            return Ok(());
        };
        let (offset, record) = (job.offset, job.record.clone());
        let admission =
            self.update_circuit(&key.1, |circuit, config| circuit.admit(now_ms, config))?;
        let completions = self.completions.clone();
        match admission {
            Admission::Rejected { retry_at_ms } => {
                completions.complete(
                    offset,
                    Box::new(Done::CircuitOpen {
                        key: key.clone(),
                        retry_at_ms,
                    }),
                );
            }
            Admission::Allowed | Admission::Probe => {
                let shared = Arc::clone(&self.shared);
                let key = key.clone();
                let probe = admission == Admission::Probe;
                let attempt = self.shared.runtime.spawn(async move {
                    let previous = record.previous_error.as_ref().map(PreviousError::from);
                    let choice = choose_script(&shared, &record).await;
                    let report = run_attempt(
                        &record.webhook,
                        previous,
                        choice,
                        shared.pool.as_ref(),
                        &shared.client,
                    )
                    .await;
                    completions.complete(offset, Box::new(Done::Attempted { key, report, probe }));
                });
                self.running.insert(offset, attempt.abort_handle());
            }
        }
        Ok(())
    }

    fn finish(&mut self, key: &PairKey, offset: i64) -> Option<Job> {
        self.running.remove(&offset);
        let queue = self.queues.get_mut(key)?;
        let position = queue.iter().position(|job| job.offset == offset)?;
        let job = queue.remove(position);
        if queue.is_empty() {
            self.queues.remove(key);
        }
        self.held -= 1;
        metrics().in_flight.dec();
        job
    }

    fn flush(&mut self, ctx: &mut Context<'_>) -> Result<(), TaskError> {
        let changes = self.store.commit()?;
        ctx.changelog(&self.changelog, changes);
        Ok(())
    }
}

/// The script this attempt runs (SPEC §2 fence, §4 lookup and disabled rules).
async fn choose_script(shared: &DeliverShared, record: &DeliveryRecord) -> ScriptChoice {
    let webhook = &record.webhook;
    let entry = shared.scripts.lookup(&webhook.config_id);
    if shared.pool.is_none() {
        return if webhook.script_hash.is_some() || entry.is_some() {
            ScriptChoice::Failed(ScriptError::new(
                ScriptErrorKind::Disabled,
                "lua is disabled but this webhook has a script; its raw payload is not sent",
            ))
        } else {
            ScriptChoice::None
        };
    }
    if let Some(hash) = &webhook.script_hash
        && !shared
            .scripts
            .wait_for_version(&webhook.config_id, hash, shared.fence_timeout)
            .await
    {
        return ScriptChoice::Failed(ScriptError::new(
            ScriptErrorKind::NotFound,
            format!(
                "script version {hash} of {} did not reach the scripts table within {:?}",
                webhook.config_id.as_str(),
                shared.fence_timeout
            ),
        ));
    }
    match shared.scripts.lookup(&webhook.config_id) {
        Some(entry) => ScriptChoice::Run(entry.script.clone()),
        None if webhook.script_hash.is_some() => ScriptChoice::Failed(ScriptError::new(
            ScriptErrorKind::NotFound,
            format!("the script of {} was deleted", webhook.config_id.as_str()),
        )),
        None => ScriptChoice::None,
    }
}

/// Uniform in [0, 1), for jitter: 52 random bits of a fresh ULID.
fn random_unit() -> f64 {
    let bits = ulid::Ulid::new().random() as u64 & ((1 << 52) - 1);
    bits as f64 / (1u64 << 52) as f64
}

impl Processor for DeliverProcessor {
    fn process(&mut self, record: Record, ctx: &mut Context<'_>) -> Result<(), TaskError> {
        let raw = record.value.unwrap_or_default();
        let delivery = match DeliveryRecord::decode(&raw) {
            Ok(delivery) => delivery,
            Err(error) => {
                self.counters.invalid += 1;
                let reason = format!("delivery record: {error}");
                let topics = &self.shared.settings.topics;
                dead_letter_undecodable(ctx, topics, record.key.as_deref(), &raw, reason);
                return Ok(());
            }
        };
        ctx.defer();
        let key = (
            delivery.webhook.config_id.as_str().to_owned(),
            delivery.webhook.endpoint.clone(),
        );
        let queue = self.queues.entry(key.clone()).or_default();
        queue.push_back(Job {
            offset: record.offset,
            record: delivery,
        });
        self.held += 1;
        metrics().in_flight.inc();
        if queue.len() == 1 {
            self.start(&key, ctx.now_ms)?;
        }
        Ok(())
    }

    fn complete(
        &mut self,
        offset: i64,
        payload: Box<dyn std::any::Any + Send>,
        ctx: &mut Context<'_>,
    ) -> Result<(), TaskError> {
        let Ok(done) = payload.downcast::<Done>() else {
            return Err(TaskError::Other(
                "deliver task got a foreign completion".into(),
            ));
        };
        let topics = Arc::clone(&self.shared.settings.topics);
        let key = match *done {
            Done::CircuitOpen { key, retry_at_ms } => {
                let Some(job) = self.finish(&key, offset) else {
                    return Ok(());
                };
                self.counters.circuit_holds += 1;
                metrics().circuit_holds.inc();
                let mut held = result(&job.record.webhook, Outcome::CircuitOpen, ctx.now_ms);
                held.next_retry_at = Some(howk_processor::delivery::decide::rfc3339(retry_at_ms));
                send_result(ctx, &topics, &held);
                // The same attempt waits for the circuit: no attempt is spent.
                let retry = DeliveryRecord {
                    due_at_ms: retry_at_ms,
                    ..job.record
                };
                let id = retry.webhook.id.as_str().to_owned();
                ctx.send(&topics.retry, id, retry.encode());
                key
            }
            Done::Attempted { key, report, probe } => {
                let Some(job) = self.finish(&key, offset) else {
                    return Ok(());
                };
                self.counters.attempts += 1;
                metrics().attempts.inc();
                metrics()
                    .attempt_seconds
                    .observe(report.duration.as_secs_f64());
                let decision = decide(
                    &job.record,
                    &report,
                    ctx.now_ms,
                    &self.shared.decide,
                    random_unit(),
                );
                let now_ms = ctx.now_ms;
                self.update_circuit(&key.1, |circuit, config| match decision.circuit {
                    CircuitEffect::Success => circuit.record_success(config),
                    CircuitEffect::Failure => circuit.record_failure(now_ms, config),
                    CircuitEffect::Untouched if probe => circuit.release_probe(),
                    CircuitEffect::Untouched => {}
                })?;
                let webhook_id = job.record.webhook.id.as_str();
                tracing::debug!(webhook_id, outcome = ?decision.result.outcome,
                    status = ?decision.result.status_code, "attempt finished");
                send_result(ctx, &topics, &decision.result);
                if let Some(retry) = &decision.retry {
                    self.counters.retries += 1;
                    metrics().retries_scheduled.inc();
                    ctx.send(&topics.retry, webhook_id, retry.encode());
                }
                if let Some(letter) = &decision.dead_letter {
                    self.counters.dead_letters += 1;
                    let reason = serde_json::to_value(letter.reason_type)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default();
                    metrics()
                        .dead_letters
                        .get_or_create(&ReasonLabel { reason })
                        .inc();
                    send_dead_letter(ctx, &topics, webhook_id, letter);
                }
                if decision.result.outcome == Outcome::Delivered {
                    self.counters.delivered += 1;
                    metrics().delivered.inc();
                }
                key
            }
        };
        self.flush(ctx)?;
        self.start(&key, ctx.now_ms)
    }

    fn backlog(&self) -> usize {
        self.held
    }

    fn changelogs(&self) -> Vec<TopicPartition> {
        vec![self.changelog.clone()]
    }

    fn close(&mut self, ends: &ChangelogEnds) -> Result<(), TaskError> {
        metrics().in_flight.dec_by(self.held as i64);
        tracing::debug!(partition = %self.partition, counters = ?self.counters,
            abandoned = self.held, "deliver task closed");
        if self.held > 0 {
            // Attempts are unfinished, so the outputs of records finished after them — their
            // changelog records among them — were never sent, while their store writes are
            // already in RocksDB. The store is ahead of its changelog: no checkpoint, and the
            // next owner rebuilds it from the changelog (review H5).
            return Ok(());
        }
        write_checkpoint(
            &self.store,
            &self.checkpoint,
            &self.changelog,
            ends,
            (self.readers)()?.as_mut(),
        )
    }
}
