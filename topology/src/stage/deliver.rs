//! Deliver (`howk.delivery`, keyed by endpoint): circuit breaker → scripts-table join → Lua →
//! sign → HTTP → classify, then a result, and a retry or a dead letter (SPEC §5).
//!
//! Concurrency: attempts run as tokio tasks, concurrent across (config_id, endpoint) pairs and
//! one at a time within a pair, so first attempts leave in the order accepted per pair. A pair's
//! queue lives here; its head is the running attempt. Every record is deferred and finished by
//! its [`Completion`](crate::processor::Completion); the task holds back outputs behind
//! unfinished records, so offsets commit only past finished work.
//!
//! Fairness (review H3): a webhook that has held its offset for `delivery.spill_after` — a slow
//! attempt, or one queued behind a slow endpoint — is *spilled*: written to the task's store
//! (and so its changelog) in the same transaction as the offset moving past it. From then on it
//! lives in the store until its attempt ends; its outputs and the deletion of its entry commit
//! together, and a task that opens the store (after a crash or a rebalance) runs what it finds.
//! So no endpoint holds back the partition for longer than `spill_after`. The queue of a pair
//! whose head has spilled (a slow or stuck endpoint) is capped at `delivery.max_per_endpoint`
//! (the overflow goes to `howk.retry` for `delivery.overflow_delay`, no attempt spent), attempts per host are capped process-wide
//! (`delivery.max_per_domain`), and a pair may be paced (`rate_limit`). Ordered configs keep a
//! failing webhook at the head of its pair, waiting in the store for its next attempt, so
//! nothing behind it is sent first.
//!
//! The circuit state (per endpoint) is local because the topic is keyed by endpoint; it is
//! written to `howk-circuit-changelog` as it changes. It is advisory: after a crash it may count
//! a failure whose record is delivered again, which only makes the breaker slightly early.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use howk_processor::delivery::attempt::{AttemptReport, ScriptChoice, run_attempt};
use howk_processor::delivery::client::{DeliveryClient, DeliveryConfig};
use howk_processor::delivery::decide::{CircuitEffect, DecideConfig, decide, result};
use howk_processor::delivery::limits::{DomainLimits, Pacer, PairPolicy};
use howk_processor::ids::ConfigId;
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
    pub limits: DeliverLimits,
    /// Where attempts run.
    pub runtime: tokio::runtime::Handle,
}

/// The fairness settings of `delivery.*`, in the units the tasks use.
pub struct DeliverLimits {
    /// Records a task holds unspilled before its partition is paused.
    pub max_in_flight: usize,
    pub max_per_endpoint: usize,
    pub spill_after_ms: i64,
    pub overflow_delay_ms: i64,
    /// Rate limit and ordering of configs that do not set their own.
    pub defaults: PairPolicy,
    pub domains: Arc<DomainLimits>,
}

impl DeliverLimits {
    pub fn new(config: &DeliveryConfig) -> Self {
        let millis = |duration: Duration| i64::try_from(duration.as_millis()).unwrap_or(i64::MAX);
        Self {
            max_in_flight: config.max_in_flight.max(1),
            max_per_endpoint: config.max_per_endpoint.max(1),
            spill_after_ms: millis(config.spill_after),
            overflow_delay_ms: millis(config.overflow_delay),
            defaults: PairPolicy {
                rate_limit: (config.rate_limit > 0.0).then_some(config.rate_limit),
                ordered: config.ordered,
            },
            domains: DomainLimits::new(config.max_per_domain),
        }
    }
}

impl Default for DeliverLimits {
    fn default() -> Self {
        Self::new(&DeliveryConfig::default())
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DeliverCounters {
    pub attempts: u64,
    pub delivered: u64,
    pub retries: u64,
    pub dead_letters: u64,
    pub circuit_holds: u64,
    pub invalid: u64,
    /// Webhooks sent back through `howk.retry` from a full pair queue.
    pub overflows: u64,
    /// Webhooks moved to the store.
    pub spills: u64,
}

/// A queue key: first attempts to one endpoint for one tenant go in order.
type PairKey = (String, String);

/// Where spilled webhooks live in the store: this prefix and the input offset (big-endian, so
/// the store lists them in offset order). Circuits are keyed by endpoint URL, which never starts
/// with a NUL byte.
const JOB_PREFIX: &[u8] = b"\0job\0";
const JOB_PREFIX_END: &[u8] = b"\0job\x01";

/// Where a rate-limited pair's bucket lives: this prefix and the pair, postcard-encoded.
const PACE_PREFIX: &[u8] = b"\0pace\0";
const PACE_PREFIX_END: &[u8] = b"\0pace\x01";

fn pace_key(key: &PairKey) -> Vec<u8> {
    let mut bytes = PACE_PREFIX.to_vec();
    bytes.extend(postcard::to_stdvec(key).expect("a pair key serializes"));
    bytes
}

fn job_key(offset: i64) -> Vec<u8> {
    let mut key = JOB_PREFIX.to_vec();
    key.extend_from_slice(&offset.to_be_bytes());
    key
}

struct Job {
    offset: i64,
    /// `None` while a spilled job waits behind its pair's head: it is read back from the store
    /// when its turn comes, so a long queue costs memory per job, not per payload.
    record: Option<DeliveryRecord>,
    /// Its config's rate limit and ordering, read once when the task took it.
    policy: PairPolicy,
    taken_ms: i64,
    /// Its attempt (or circuit check) is under way: a completion will come.
    running: bool,
    /// In the store; its input offset is free to move on.
    spilled: bool,
    spill_requested: bool,
    /// An ordered job's next attempt (after a failure, or while its circuit is open).
    not_before_ms: i64,
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
    /// The job has held its offset for `spill_after`: move it to the store.
    Spill {
        key: PairKey,
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
    /// Every job of the task, spilled or not.
    jobs: usize,
    /// Jobs not in the store: they hold their input offset.
    unspilled: usize,
    /// Spilled jobs found when the store opened have offsets up to this; their input records
    /// may be read again (when the offset commit did not follow) and are not taken twice.
    restored_up_to: Option<i64>,
    /// Rate-limited pairs' next start times.
    pacers: HashMap<PairKey, Pacer>,
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
        let mut task = Self {
            checkpoint: opened.checkpoint_path(),
            store: opened.store,
            shared,
            partition,
            changelog,
            readers,
            circuits: HashMap::new(),
            queues: HashMap::new(),
            jobs: 0,
            unspilled: 0,
            restored_up_to: None,
            pacers: HashMap::new(),
            completions,
            running: HashMap::new(),
            counters: DeliverCounters::default(),
        };
        task.load_pacers()?;
        task.resume_spilled()?;
        Ok(task)
    }

    /// Reads the rate-limited pairs' buckets an earlier incarnation left (the idle ones are
    /// forgotten at the next punctuation).
    fn load_pacers(&mut self) -> Result<(), TaskError> {
        for (key, value) in self.store.range(PACE_PREFIX, PACE_PREFIX_END, usize::MAX)? {
            let pair = postcard::from_bytes::<PairKey>(&key[PACE_PREFIX.len()..]);
            match (pair, postcard::from_bytes::<Pacer>(&value)) {
                (Ok(pair), Ok(pacer)) => {
                    self.pacers.insert(pair, pacer);
                }
                // A bucket is advisory: an unreadable one is dropped, not a task error.
                _ => self.store.delete(&key),
            }
        }
        Ok(())
    }

    /// Queues the spilled jobs the store holds (an earlier incarnation's) and starts them.
    fn resume_spilled(&mut self) -> Result<(), TaskError> {
        let now_ms = crate::stream_thread::now_ms();
        let entries = self.store.range(JOB_PREFIX, JOB_PREFIX_END, usize::MAX)?;
        for (key, value) in entries {
            let Some(offset) = key
                .get(JOB_PREFIX.len()..)
                .and_then(|bytes| <[u8; 8]>::try_from(bytes).ok())
                .map(i64::from_be_bytes)
            else {
                return Err(TaskError::Other(format!(
                    "deliver store of {} holds a job key of {} bytes",
                    self.partition,
                    key.len()
                )));
            };
            let record = DeliveryRecord::decode(&value).map_err(|error| {
                TaskError::Other(format!(
                    "deliver store of {} holds an unreadable job at offset {offset}: {error}",
                    self.partition
                ))
            })?;
            let pair = pair_key(&record);
            let policy = self.policy(&record.webhook.config_id);
            self.queues.entry(pair).or_default().push_back(Job {
                offset,
                not_before_ms: if policy.ordered { record.due_at_ms } else { 0 },
                record: None,
                policy,
                taken_ms: now_ms,
                running: false,
                spilled: true,
                spill_requested: true,
            });
            self.jobs += 1;
            metrics().in_flight.inc();
            self.restored_up_to = Some(self.restored_up_to.map_or(offset, |up| up.max(offset)));
        }
        if self.jobs > 0 {
            tracing::info!(partition = %self.partition, jobs = self.jobs,
                "resuming webhooks that were waiting in the deliver store");
        }
        let keys: Vec<PairKey> = self.queues.keys().cloned().collect();
        for key in keys {
            self.start(&key, now_ms)?;
        }
        Ok(())
    }

    /// The rate limit and ordering of `config_id`.
    fn policy(&self, config_id: &ConfigId) -> PairPolicy {
        let entry = self.shared.scripts.lookup(config_id);
        let script_config = entry
            .as_ref()
            .and_then(|entry| entry.script.config.as_deref());
        PairPolicy::resolve(self.shared.limits.defaults, script_config)
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

    /// Starts the head job of `key` unless it runs already or waits for its time: held back by
    /// the circuit, or run.
    fn start(&mut self, key: &PairKey, now_ms: i64) -> Result<(), TaskError> {
        let Some(job) = self.queues.get(key).and_then(|queue| queue.front()) else {
            return Ok(());
        };
        if job.running || job.not_before_ms > now_ms {
            return Ok(());
        }
        let (offset, rate_limit) = (job.offset, job.policy.rate_limit);
        let record = match &job.record {
            Some(record) => record.clone(),
            None => self.read_spilled(offset)?,
        };
        let admission =
            self.update_circuit(&key.1, |circuit, config| circuit.admit(now_ms, config))?;
        let pace = match rate_limit {
            // A webhook the circuit holds back takes no start time.
            Some(rate) if !matches!(admission, Admission::Rejected { .. }) => {
                self.reserve_start(key, now_ms, rate)
            }
            _ => Duration::ZERO,
        };
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
                    if !pace.is_zero() {
                        tokio::time::sleep(pace).await;
                    }
                    let _permit = shared
                        .limits
                        .domains
                        .acquire(&record.webhook.endpoint)
                        .await;
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
        if let Some(job) = self.queues.get_mut(key).and_then(|queue| queue.front_mut()) {
            job.running = true;
            // The attempt keeps its own copy; a spilled head need not keep another.
            if job.spilled {
                job.record = None;
            }
        }
        Ok(())
    }

    /// Reserves the next start of a rate-limited pair: how long its attempt waits. The bucket
    /// is written to the store (one small record per paced attempt, only for rate-limited
    /// pairs), so a restarted or reassigned task keeps the spacing instead of sending at once.
    fn reserve_start(&mut self, key: &PairKey, now_ms: i64, rate: f64) -> Duration {
        let pacer = self.pacers.entry(key.clone()).or_default();
        let wait = pacer.reserve(now_ms, rate);
        let bytes = postcard::to_stdvec(&*pacer).expect("a pacer serializes");
        self.store.put(&pace_key(key), &bytes);
        wait
    }

    fn read_spilled(&self, offset: i64) -> Result<DeliveryRecord, TaskError> {
        let bytes = self.store.get(&job_key(offset))?.ok_or_else(|| {
            TaskError::Other(format!(
                "deliver store of {} lost the webhook at offset {offset}",
                self.partition
            ))
        })?;
        DeliveryRecord::decode(&bytes).map_err(|error| {
            TaskError::Other(format!(
                "deliver store of {} holds an unreadable job at offset {offset}: {error}",
                self.partition
            ))
        })
    }

    fn job_mut(&mut self, key: &PairKey, offset: i64) -> Option<&mut Job> {
        self.queues
            .get_mut(key)?
            .iter_mut()
            .find(|job| job.offset == offset)
    }

    /// Moves a job to the store as `encoded` (or updates its stored record): its offset may
    /// move on.
    fn spill(&mut self, key: &PairKey, offset: i64, encoded: &[u8]) {
        self.store.put(&job_key(offset), encoded);
        let Some(job) = self.job_mut(key, offset) else {
            return;
        };
        if !job.spilled {
            job.spilled = true;
            job.spill_requested = true;
            self.unspilled -= 1;
            self.counters.spills += 1;
            metrics().spills.inc();
        }
    }

    /// The job whose attempt (or circuit check) just ended, no longer running: whether its pair
    /// is ordered, and its record, taken out of the job (which is then finished, or waits in
    /// the store). `None` when the task no longer has it.
    fn ended(
        &mut self,
        key: &PairKey,
        offset: i64,
    ) -> Result<Option<(bool, DeliveryRecord)>, TaskError> {
        self.running.remove(&offset);
        let Some(job) = self.job_mut(key, offset) else {
            return Ok(None);
        };
        job.running = false;
        let ordered = job.policy.ordered;
        let record = match job.record.take() {
            Some(record) => record,
            None => self.read_spilled(offset)?,
        };
        Ok(Some((ordered, record)))
    }

    /// An ordered pair's head waits in the store, as `record`, until `until_ms`, keeping its
    /// place: nothing behind it starts first.
    fn wait_in_store(
        &mut self,
        key: &PairKey,
        offset: i64,
        record: &DeliveryRecord,
        until_ms: i64,
    ) {
        self.spill(key, offset, &record.encode());
        if let Some(job) = self.job_mut(key, offset) {
            job.not_before_ms = until_ms;
            job.record = None;
        }
    }

    /// Removes a finished job (and its stored copy).
    fn finish(&mut self, key: &PairKey, offset: i64) -> Option<Job> {
        self.running.remove(&offset);
        let queue = self.queues.get_mut(key)?;
        let position = queue.iter().position(|job| job.offset == offset)?;
        let job = queue.remove(position)?;
        if queue.is_empty() {
            self.queues.remove(key);
        }
        if job.spilled {
            self.store.delete(&job_key(offset));
        } else {
            self.unspilled -= 1;
        }
        self.jobs -= 1;
        metrics().in_flight.dec();
        Some(job)
    }

    fn flush(&mut self, ctx: &mut Context<'_>) -> Result<(), TaskError> {
        let changes = self.store.commit()?;
        ctx.changelog(&self.changelog, changes);
        Ok(())
    }

    /// A held-back webhook goes through `howk.retry` and comes back at `due_at_ms`, with no
    /// attempt spent.
    fn send_back(ctx: &mut Context<'_>, topic: &Arc<str>, record: DeliveryRecord, due_at_ms: i64) {
        let retry = DeliveryRecord {
            due_at_ms,
            ..record
        };
        let id = retry.webhook.id.as_str().to_owned();
        ctx.send(topic, id, retry.encode());
    }

    fn attempted(
        &mut self,
        offset: i64,
        key: &PairKey,
        report: AttemptReport,
        probe: bool,
        ctx: &mut Context<'_>,
    ) -> Result<(), TaskError> {
        let Some((ordered, record)) = self.ended(key, offset)? else {
            return Ok(());
        };
        let topics = Arc::clone(&self.shared.settings.topics);
        self.counters.attempts += 1;
        metrics().attempts.inc();
        metrics()
            .attempt_seconds
            .observe(report.duration.as_secs_f64());
        let decision = decide(
            &record,
            &report,
            ctx.now_ms,
            &self.shared.decide,
            random_unit(),
        );
        let now_ms = ctx.now_ms;
        let slow = report.duration >= self.shared.circuit.slow_call_duration;
        self.update_circuit(&key.1, |circuit, config| match decision.circuit {
            CircuitEffect::Success if slow => circuit.record_slow_success(now_ms, config),
            CircuitEffect::Success => circuit.record_success(config),
            CircuitEffect::Failure => circuit.record_failure(now_ms, config),
            CircuitEffect::Untouched if probe => circuit.release_probe(),
            CircuitEffect::Untouched => {}
        })?;
        let webhook_id = record.webhook.id.as_str();
        tracing::debug!(webhook_id, outcome = ?decision.result.outcome,
            status = ?decision.result.status_code, "attempt finished");
        send_result(ctx, &topics, &decision.result);
        if let Some(retry) = decision.retry {
            self.counters.retries += 1;
            metrics().retries_scheduled.inc();
            if ordered {
                // Strict FIFO: the webhook keeps the head of its pair and waits in the store
                // for its next attempt; nothing behind it goes first.
                self.wait_in_store(key, offset, &retry, retry.due_at_ms);
                return Ok(());
            }
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
        self.finish(key, offset);
        Ok(())
    }

    fn circuit_open(
        &mut self,
        offset: i64,
        key: &PairKey,
        retry_at_ms: i64,
        ctx: &mut Context<'_>,
    ) -> Result<(), TaskError> {
        let Some((ordered, record)) = self.ended(key, offset)? else {
            return Ok(());
        };
        self.counters.circuit_holds += 1;
        metrics().circuit_holds.inc();
        let topics = Arc::clone(&self.shared.settings.topics);
        let mut held = result(&record.webhook, Outcome::CircuitOpen, ctx.now_ms);
        held.next_retry_at = Some(howk_processor::delivery::decide::rfc3339(retry_at_ms));
        send_result(ctx, &topics, &held);
        if ordered {
            // The head waits for the circuit in the store, keeping its place.
            self.wait_in_store(key, offset, &record, retry_at_ms);
            return Ok(());
        }
        // The same attempt waits for the circuit: no attempt is spent.
        self.finish(key, offset);
        Self::send_back(ctx, &topics.retry, record, retry_at_ms);
        Ok(())
    }
}

fn pair_key(record: &DeliveryRecord) -> PairKey {
    (
        record.webhook.config_id.as_str().to_owned(),
        record.webhook.endpoint.clone(),
    )
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
    if let Some(pin) = &webhook.script_pin {
        return pinned_script(shared, webhook, pin).await;
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

/// A replay's pinned script: no script (`"none"`), or exactly that version, waited for like a
/// `script_hash` fence.
async fn pinned_script(
    shared: &DeliverShared,
    webhook: &howk_processor::record::Webhook,
    pin: &str,
) -> ScriptChoice {
    if pin == "none" {
        return ScriptChoice::None;
    }
    if shared.pool.is_none() {
        return ScriptChoice::Failed(ScriptError::new(
            ScriptErrorKind::Disabled,
            "lua is disabled but this webhook is pinned to a script; its raw payload is not sent",
        ));
    }
    let config_id = webhook.config_id.as_str();
    shared
        .scripts
        .wait_for_version(&webhook.config_id, pin, shared.fence_timeout)
        .await;
    match shared.scripts.pinned(config_id, pin) {
        Ok(Some(script)) => ScriptChoice::Run(script),
        Ok(None) => ScriptChoice::Failed(ScriptError::new(
            ScriptErrorKind::NotFound,
            format!("pinned script version {pin} of {config_id} is not in the scripts table"),
        )),
        Err(error) => ScriptChoice::Failed(ScriptError::new(
            ScriptErrorKind::NotFound,
            format!("pinned script version {pin} of {config_id} cannot be read: {error}"),
        )),
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
        if self
            .restored_up_to
            .is_some_and(|up_to| record.offset <= up_to)
            && self.store.get(&job_key(record.offset))?.is_some()
        {
            // Taken from the store already, when the task opened.
            return Ok(());
        }
        let key = pair_key(&delivery);
        let policy = self.policy(&delivery.webhook.config_id);
        // A pair whose head has waited past spill_after is slow or stuck; a healthy pair's queue
        // under a burst drains in moments and is bounded by max_in_flight like any other.
        let stuck = self.queues.get(&key).filter(|queue| {
            queue.len() >= self.shared.limits.max_per_endpoint
                && queue.front().is_some_and(|head| head.spilled)
        });
        if !policy.ordered && stuck.is_some() {
            // The pair is backed up: the webhook comes back later instead of holding memory
            // and store here (no attempt spent).
            self.counters.overflows += 1;
            metrics().overflows.inc();
            let due = ctx.now_ms + self.shared.limits.overflow_delay_ms;
            let topic = Arc::clone(&self.shared.settings.topics.retry);
            Self::send_back(ctx, &topic, delivery, due);
            return Ok(());
        }
        ctx.defer();
        let queue = self.queues.entry(key.clone()).or_default();
        queue.push_back(Job {
            offset: record.offset,
            record: Some(delivery),
            policy,
            taken_ms: ctx.now_ms,
            running: false,
            spilled: false,
            spill_requested: false,
            not_before_ms: 0,
        });
        self.jobs += 1;
        self.unspilled += 1;
        metrics().in_flight.inc();
        if queue.len() == 1 {
            self.start(&key, ctx.now_ms)?;
            self.flush(ctx)?;
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
        let key = match *done {
            Done::Spill { key } => {
                if let Some(job) = self.job_mut(&key, offset)
                    && !job.spilled
                {
                    // Only a spilled job gives its record up; the slot this completion
                    // releases must not leave the webhook nowhere.
                    let Some(record) = &job.record else {
                        return Err(TaskError::Other(format!(
                            "deliver task lost the record of its unspilled webhook at offset \
                             {offset}"
                        )));
                    };
                    let bytes = record.encode();
                    // A waiting job is read back when its turn comes.
                    if !job.running {
                        job.record = None;
                    }
                    self.spill(&key, offset, &bytes);
                }
                return self.flush(ctx);
            }
            Done::CircuitOpen { key, retry_at_ms } => {
                self.circuit_open(offset, &key, retry_at_ms, ctx)?;
                key
            }
            Done::Attempted { key, report, probe } => {
                self.attempted(offset, &key, report, probe, ctx)?;
                key
            }
        };
        self.start(&key, ctx.now_ms)?;
        self.flush(ctx)
    }

    fn punctuate(&mut self, ctx: &mut Context<'_>) -> Result<(), TaskError> {
        let now_ms = ctx.now_ms;
        let spill_at = now_ms.saturating_sub(self.shared.limits.spill_after_ms);
        let mut due = Vec::new();
        for (key, queue) in &mut self.queues {
            // Within a queue, jobs are in the order taken and spill in that order (a head that
            // waits in the store is spilled first), so the ones left to ask for are a suffix.
            let first = queue.partition_point(|job| job.spill_requested);
            for job in queue.range_mut(first..) {
                if job.taken_ms > spill_at {
                    break;
                }
                job.spill_requested = true;
                self.completions
                    .complete(job.offset, Box::new(Done::Spill { key: key.clone() }));
            }
            if queue
                .front()
                .is_some_and(|job| !job.running && job.not_before_ms <= now_ms)
            {
                due.push(key.clone());
            }
        }
        for key in due {
            self.start(&key, now_ms)?;
        }
        // An idle bucket has nothing to remember: gone from memory and store.
        let store = &mut self.store;
        self.pacers.retain(|key, pacer| {
            let idle = pacer.idle(now_ms);
            if idle {
                store.delete(&pace_key(key));
            }
            !idle
        });
        self.flush(ctx)
    }

    fn backlog(&self) -> usize {
        self.unspilled
    }

    fn changelogs(&self) -> Vec<TopicPartition> {
        vec![self.changelog.clone()]
    }

    fn close(&mut self, ends: &ChangelogEnds) -> Result<(), TaskError> {
        metrics().in_flight.dec_by(self.jobs as i64);
        tracing::debug!(partition = %self.partition, counters = ?self.counters,
            abandoned = self.unspilled, waiting_in_store = self.jobs - self.unspilled,
            "deliver task closed");
        if self.unspilled > 0 {
            // Attempts are unfinished, so the outputs of records finished after them — their
            // changelog records among them — were never sent, while their store writes are
            // already in RocksDB. The store is ahead of its changelog: no checkpoint, and the
            // next owner rebuilds it from the changelog (review H5). Spilled jobs are in the
            // changelog and resume wherever the partition opens next.
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
