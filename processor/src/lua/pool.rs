//! A pool of engine threads: how async code (the deliver stage, the API's test endpoint) runs
//! scripts. Lua is CPU work, so it runs off the reactor, on `size` threads that each own one
//! engine (a VM is not `Send`; it never moves).
//!
//! Submission is bounded (`queue` jobs wait at most): callers wait for room, which is the
//! backpressure a burst of webhooks meets.
//!
//! The watchdog. The engine's hook stops any Lua code at its deadline, but not a single long
//! call into a C library function: a pathological pattern (`string.find(s, ".-.-.-b")` on a few
//! hundred bytes) runs for seconds inside one call. A caller therefore waits at most
//! `timeout + WATCHDOG_GRACE`; past that it gets `script_timeout`, the job is marked abandoned
//! and a replacement thread starts, so the pool keeps `size` working threads. The stuck thread
//! finishes its call, sees the mark, drops its engine and exits.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::engine::{EngineSettings, LuaEngine};
use super::error::{ScriptError, ScriptErrorKind};
use super::script::{PreviousError, Script, ScriptInput, ScriptMetadata, TransformedRequest};

/// How long past its deadline a stuck execution is waited for before it is abandoned. Long
/// enough for module I/O to notice its own deadline; short next to the 500 ms default budget.
pub const WATCHDOG_GRACE: Duration = Duration::from_millis(200);

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

struct Job {
    script: Script,
    input: OwnedInput,
    reply: oneshot::Sender<Outcome>,
    /// When a thread started it; the watchdog measures from here, not from submission.
    started: Arc<OnceLock<Instant>>,
    /// Set by the caller when it gave up waiting: the thread that ran it must retire.
    abandoned: Arc<AtomicBool>,
}

/// The pool. Cheap to share (`Arc`).
pub struct EnginePool {
    sender: mpsc::Sender<Job>,
    receiver: Arc<Mutex<mpsc::Receiver<Job>>>,
    settings: EngineSettings,
    /// Threads abandoned so far (a metric, and what the tests assert).
    abandoned_threads: AtomicUsize,
}

/// The pool is gone (its threads ended).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the script engine pool has shut down")]
pub struct PoolClosed;

impl EnginePool {
    /// Starts `size` engine threads; at most `queue` jobs wait for one.
    pub fn start(settings: EngineSettings, size: usize, queue: usize) -> Arc<Self> {
        let (sender, receiver) = mpsc::channel(queue.max(1));
        let pool = Arc::new(Self {
            sender,
            receiver: Arc::new(Mutex::new(receiver)),
            settings,
            abandoned_threads: AtomicUsize::new(0),
        });
        for _ in 0..size.max(1) {
            pool.spawn_thread();
        }
        pool
    }

    fn spawn_thread(&self) {
        let (receiver, settings) = (Arc::clone(&self.receiver), self.settings.clone());
        std::thread::Builder::new()
            .name("howk-lua".into())
            .spawn(move || {
                let mut engine = LuaEngine::new(settings);
                loop {
                    // Hold the lock only while taking a job, not while running it.
                    let job = receiver.lock().expect("pool receiver lock").blocking_recv();
                    let Some(job) = job else { return };
                    let _ = job.started.set(Instant::now());
                    let outcome = engine.execute(&job.script, &job.input.as_input());
                    if job.abandoned.load(Ordering::Acquire) {
                        // A replacement already runs; this thread and its engine retire.
                        return;
                    }
                    let _ = job.reply.send(outcome);
                }
            })
            .expect("spawn a script engine thread");
    }

    /// Runs `script` on `input` on an engine thread.
    pub async fn execute(&self, script: Script, input: OwnedInput) -> Result<Outcome, PoolClosed> {
        let (reply, mut answer) = oneshot::channel();
        let started = Arc::new(OnceLock::new());
        let abandoned = Arc::new(AtomicBool::new(false));
        let job = Job {
            script,
            input,
            reply,
            started: Arc::clone(&started),
            abandoned: Arc::clone(&abandoned),
        };
        self.sender.send(job).await.map_err(|_| PoolClosed)?;
        let limit = self.settings.timeout + WATCHDOG_GRACE;
        loop {
            // Until a thread takes the job, wait a full limit; after, what is left of it.
            let wait = match started.get() {
                Some(at) => limit.saturating_sub(at.elapsed()),
                None => limit,
            };
            match tokio::time::timeout(wait, &mut answer).await {
                Ok(Ok(outcome)) => return Ok(outcome),
                Ok(Err(_)) => return Err(PoolClosed),
                Err(_) if started.get().is_some_and(|at| at.elapsed() >= limit) => {
                    abandoned.store(true, Ordering::Release);
                    self.abandoned_threads.fetch_add(1, Ordering::Relaxed);
                    self.spawn_thread();
                    return Ok(Err(ScriptError::new(
                        ScriptErrorKind::Timeout,
                        "script exceeded its time limit inside a single library call; \
                         its engine thread was replaced",
                    )));
                }
                // Still queued, or started late in this wait: keep waiting.
                Err(_) => continue,
            }
        }
    }

    pub fn abandoned_threads(&self) -> usize {
        self.abandoned_threads.load(Ordering::Relaxed)
    }
}
