//! A pool of engine threads: how async code (the deliver stage, the API's test endpoint) runs
//! scripts. Lua is CPU work, so it runs off the reactor, on `size` threads that each own one
//! engine (a VM is not `Send`; it never moves).
//!
//! Submission is bounded (`queue` jobs wait at most): callers wait for room, which is the
//! backpressure a burst of webhooks meets.
//!
//! The watchdog. The engine stops Lua code at its deadline, and the library functions that loop
//! in C are guarded (the pattern matcher checks the deadline, table ranges run in chunks), so a
//! stuck call is not expected. The watchdog is the last line should one exist: a caller waits at
//! most `timeout + WATCHDOG_GRACE`; past that it gets `script_timeout`, the thread is marked
//! abandoned, and the script (by hash) is quarantined — refused at once for [`QUARANTINE`]
//! instead of being given another thread to burn. A replacement starts while fewer than
//! `size` threads are stuck; past that cap the pool runs short-handed and reports itself
//! degraded ([`PoolHealth`]) rather than growing without bound. A stuck thread that finally
//! returns drops its engine and, when the pool is short of workers, serves again with a fresh
//! one; otherwise it exits.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::engine::{EngineSettings, LuaEngine};
use super::error::{ScriptError, ScriptErrorKind};
use super::script::{PreviousError, Script, ScriptInput, ScriptMetadata, TransformedRequest};
use super::transformer::{Post, TransformerInput};

/// How long past its deadline a stuck execution is waited for before it is abandoned. Long
/// enough for module I/O to notice its own deadline; short next to the 500 ms default budget.
pub const WATCHDOG_GRACE: Duration = Duration::from_millis(200);

/// How long a script whose execution had to be abandoned is refused without running.
pub const QUARANTINE: Duration = Duration::from_secs(600);

/// Scripts kept in quarantine at most; the oldest entry gives way.
const QUARANTINE_CAPACITY: usize = 1024;

/// A webhook as the pool carries it to an engine thread.
#[derive(Debug, Clone)]
pub struct OwnedInput {
    pub payload: Bytes,
    pub headers: Vec<(String, String)>,
    pub webhook_id: String,
    pub config_id: String,
    pub attempt: u32,
    pub max_attempts: u32,
    pub created_at: String,
    pub previous_error: Option<PreviousError>,
}

impl OwnedInput {
    /// The borrowed view an engine executes.
    pub fn as_input(&self) -> ScriptInput<'_> {
        ScriptInput {
            payload: &self.payload,
            headers: &self.headers,
            metadata: ScriptMetadata {
                webhook_id: &self.webhook_id,
                config_id: &self.config_id,
                attempt: self.attempt,
                max_attempts: self.max_attempts,
                created_at: &self.created_at,
            },
            previous_error: self.previous_error.as_ref(),
        }
    }
}

type Outcome = Result<TransformedRequest, ScriptError>;

/// What a job asks of an engine: a delivery script on a webhook, or a transformer on an
/// incoming request (with its `allowed_domains`).
enum Work {
    Deliver(OwnedInput),
    Transform(TransformerInput, Arc<Vec<String>>),
}

/// What an engine answers, by kind of work.
enum Answer {
    Delivered(Outcome),
    Transformed(Result<Vec<Post>, ScriptError>),
}

struct Job {
    script: Script,
    work: Work,
    reply: oneshot::Sender<Answer>,
    /// When a thread started it; the watchdog measures from here, not from submission.
    started: Arc<OnceLock<Instant>>,
    /// Set by the caller when it gave up waiting: the thread that ran it must retire.
    abandoned: Arc<AtomicBool>,
}

/// The pool. Cheap to share (`Arc`).
pub struct EnginePool {
    sender: mpsc::Sender<Job>,
    shared: Arc<Shared>,
}

/// What the pool and its threads share.
struct Shared {
    receiver: Mutex<mpsc::Receiver<Job>>,
    settings: EngineSettings,
    /// Threads the pool should have serving.
    size: usize,
    /// Threads serving jobs now (not stuck).
    working: AtomicUsize,
    /// Threads abandoned in a call that has not returned yet; at most `size`.
    stuck: AtomicUsize,
    /// Threads abandoned so far.
    abandoned_total: AtomicUsize,
    /// Script hash → until when it is refused.
    quarantine: Mutex<HashMap<String, Instant>>,
}

/// The pool's health, for metrics and readiness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolHealth {
    pub size: usize,
    pub working: usize,
    pub stuck: usize,
    pub abandoned_total: usize,
    pub quarantined_scripts: usize,
}

impl PoolHealth {
    /// Fewer threads serve than configured: stuck calls past the cap.
    pub fn degraded(&self) -> bool {
        self.working < self.size
    }
}

/// The pool is gone (its threads ended).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the script engine pool has shut down")]
pub struct PoolClosed;

impl EnginePool {
    /// Starts `size` engine threads; at most `queue` jobs wait for one.
    pub fn start(settings: EngineSettings, size: usize, queue: usize) -> Arc<Self> {
        let (sender, receiver) = mpsc::channel(queue.max(1));
        let size = size.max(1);
        let shared = Arc::new(Shared {
            receiver: Mutex::new(receiver),
            settings,
            size,
            working: AtomicUsize::new(0),
            stuck: AtomicUsize::new(0),
            abandoned_total: AtomicUsize::new(0),
            quarantine: Mutex::new(HashMap::new()),
        });
        for _ in 0..size {
            shared.working.fetch_add(1, Ordering::AcqRel);
            Shared::spawn_thread(&shared);
        }
        Arc::new(Self { sender, shared })
    }

    /// Runs `script` on `input` on an engine thread.
    pub async fn execute(&self, script: Script, input: OwnedInput) -> Result<Outcome, PoolClosed> {
        Ok(match self.run(script, Work::Deliver(input)).await? {
            Ok(Answer::Delivered(outcome)) => outcome,
            Ok(Answer::Transformed(_)) => unreachable!("a delivery job answers as one"),
            Err(error) => Err(error),
        })
    }

    /// Runs the transformer `script` on one incoming request on an engine thread: the webhooks
    /// it posted.
    pub async fn transform(
        &self,
        script: Script,
        input: TransformerInput,
        allowed_domains: Arc<Vec<String>>,
    ) -> Result<Result<Vec<Post>, ScriptError>, PoolClosed> {
        Ok(
            match self
                .run(script, Work::Transform(input, allowed_domains))
                .await?
            {
                Ok(Answer::Transformed(outcome)) => outcome,
                Ok(Answer::Delivered(_)) => unreachable!("a transformer job answers as one"),
                Err(error) => Err(error),
            },
        )
    }

    /// Runs one job under the watchdog: its answer, or the error that replaced it (quarantine,
    /// abandonment).
    async fn run(
        &self,
        script: Script,
        work: Work,
    ) -> Result<Result<Answer, ScriptError>, PoolClosed> {
        if let Some(left) = self.shared.quarantined(&script.hash) {
            return Ok(Err(ScriptError::new(
                ScriptErrorKind::Timeout,
                format!(
                    "script refused for another {}s: an earlier execution of it got stuck in a \
                     library call past its time limit",
                    left.as_secs()
                ),
            )));
        }
        let hash = script.hash.clone();
        let (reply, mut answer) = oneshot::channel();
        let started = Arc::new(OnceLock::new());
        let abandoned = Arc::new(AtomicBool::new(false));
        let job = Job {
            script,
            work,
            reply,
            started: Arc::clone(&started),
            abandoned: Arc::clone(&abandoned),
        };
        self.sender.send(job).await.map_err(|_| PoolClosed)?;
        let limit = self.shared.settings.timeout + WATCHDOG_GRACE;
        loop {
            // Until a thread takes the job, wait a full limit; after, what is left of it.
            let wait = match started.get() {
                Some(at) => limit.saturating_sub(at.elapsed()),
                None => limit,
            };
            match tokio::time::timeout(wait, &mut answer).await {
                Ok(Ok(answer)) => return Ok(Ok(answer)),
                Ok(Err(_)) => return Err(PoolClosed),
                Err(_) if started.get().is_some_and(|at| at.elapsed() >= limit) => {
                    abandoned.store(true, Ordering::Release);
                    self.shared.abandon(&hash);
                    return Ok(Err(ScriptError::new(
                        ScriptErrorKind::Timeout,
                        "script exceeded its time limit inside a single library call; \
                         its engine thread was abandoned and the script is quarantined",
                    )));
                }
                // Still queued, or started late in this wait: keep waiting.
                Err(_) => continue,
            }
        }
    }

    pub fn abandoned_threads(&self) -> usize {
        self.shared.abandoned_total.load(Ordering::Relaxed)
    }

    pub fn health(&self) -> PoolHealth {
        let shared = &self.shared;
        let mut quarantine = shared.quarantine.lock().expect("quarantine lock");
        let now = Instant::now();
        quarantine.retain(|_, until| *until > now);
        PoolHealth {
            size: shared.size,
            working: shared.working.load(Ordering::Acquire),
            stuck: shared.stuck.load(Ordering::Acquire),
            abandoned_total: shared.abandoned_total.load(Ordering::Relaxed),
            quarantined_scripts: quarantine.len(),
        }
    }
}

impl Shared {
    fn spawn_thread(shared: &Arc<Self>) {
        let shared = Arc::clone(shared);
        std::thread::Builder::new()
            .name("howk-lua".into())
            .spawn(move || {
                let mut engine = LuaEngine::new(shared.settings.clone());
                loop {
                    // Hold the lock only while taking a job, not while running it.
                    let job = shared
                        .receiver
                        .lock()
                        .expect("pool receiver lock")
                        .blocking_recv();
                    let Some(job) = job else { return };
                    let _ = job.started.set(Instant::now());
                    let outcome = match &job.work {
                        Work::Deliver(input) => {
                            Answer::Delivered(engine.execute(&job.script, &input.as_input()))
                        }
                        Work::Transform(input, allowed_domains) => Answer::Transformed(
                            engine.transform(&job.script, input, allowed_domains),
                        ),
                    };
                    if job.abandoned.load(Ordering::Acquire) {
                        // The caller gave up on this thread: whatever its engine holds is not
                        // reused. Serve again only if the pool is short of workers.
                        shared.stuck.fetch_sub(1, Ordering::AcqRel);
                        if !shared.rejoin() {
                            return;
                        }
                        engine = LuaEngine::new(shared.settings.clone());
                        continue;
                    }
                    let _ = job.reply.send(outcome);
                }
            })
            .expect("spawn a script engine thread");
    }

    /// A caller abandoned a thread stuck in `hash`'s execution.
    fn abandon(self: &Arc<Self>, hash: &str) {
        self.abandoned_total.fetch_add(1, Ordering::Relaxed);
        self.working.fetch_sub(1, Ordering::AcqRel);
        {
            let mut quarantine = self.quarantine.lock().expect("quarantine lock");
            let now = Instant::now();
            if quarantine.len() >= QUARANTINE_CAPACITY {
                quarantine.retain(|_, until| *until > now);
                if let Some(oldest) = quarantine
                    .iter()
                    .min_by_key(|(_, until)| **until)
                    .map(|(hash, _)| hash.clone())
                {
                    quarantine.remove(&oldest);
                }
            }
            quarantine.insert(hash.to_owned(), now + QUARANTINE);
        }
        let stuck = self.stuck.fetch_add(1, Ordering::AcqRel) + 1;
        if stuck <= self.size {
            self.working.fetch_add(1, Ordering::AcqRel);
            Self::spawn_thread(self);
            tracing::warn!(
                script_hash = hash,
                stuck,
                "script engine thread abandoned in a library call; script quarantined"
            );
        } else {
            tracing::error!(
                script_hash = hash,
                stuck,
                working = self.working.load(Ordering::Acquire),
                "script engine pool degraded: too many threads stuck in library calls, \
                 no replacement started"
            );
        }
    }

    /// A stuck thread came back: it serves again when the pool is short of workers.
    fn rejoin(&self) -> bool {
        self.working
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |working| {
                (working < self.size).then_some(working + 1)
            })
            .is_ok()
    }

    fn quarantined(&self, hash: &str) -> Option<Duration> {
        let quarantine = self.quarantine.lock().expect("quarantine lock");
        let left = quarantine
            .get(hash)?
            .saturating_duration_since(Instant::now());
        (!left.is_zero()).then_some(left)
    }
}
