//! The state of the execution in progress, shared by the engine, the instruction hook that
//! enforces the deadline, and the modules (which need the tenant's namespace, the remaining
//! time budget, and a place to record a transient failure).
//!
//! One `ExecutionContext` lives as long as its VM and is reset in place before each execution,
//! so starting an execution allocates nothing here.

use std::cell::{Cell, Ref, RefCell};
use std::time::{Duration, Instant};

/// Log lines one execution may write; a script logging in a loop must not flood the logs.
pub const MAX_LOG_LINES_PER_EXECUTION: u32 = 100;

#[derive(Debug)]
pub struct ExecutionContext {
    /// When the execution must stop (wall clock, module I/O included).
    deadline: Cell<Instant>,
    /// Set by the hook when it aborted the execution for its deadline.
    timed_out: Cell<bool>,
    /// The first transient module failure of this execution (makes a later error retryable).
    transient_cause: RefCell<Option<String>>,
    /// A crypto key the script asked for and this process does not have.
    missing_crypto_key: RefCell<Option<String>>,
    webhook_id: RefCell<String>,
    config_id: RefCell<String>,
    log_lines_left: Cell<u32>,
}

impl Default for ExecutionContext {
    fn default() -> Self {
        Self {
            deadline: Cell::new(Instant::now()),
            timed_out: Cell::new(false),
            transient_cause: RefCell::new(None),
            missing_crypto_key: RefCell::new(None),
            webhook_id: RefCell::new(String::new()),
            config_id: RefCell::new(String::new()),
            log_lines_left: Cell::new(MAX_LOG_LINES_PER_EXECUTION),
        }
    }
}

impl ExecutionContext {
    /// Prepares for a new execution.
    pub(crate) fn begin(&self, deadline: Instant, webhook_id: &str, config_id: &str) {
        self.deadline.set(deadline);
        self.timed_out.set(false);
        self.transient_cause.borrow_mut().take();
        self.missing_crypto_key.borrow_mut().take();
        let mut id = self.webhook_id.borrow_mut();
        id.clear();
        id.push_str(webhook_id);
        let mut id = self.config_id.borrow_mut();
        id.clear();
        id.push_str(config_id);
        self.log_lines_left.set(MAX_LOG_LINES_PER_EXECUTION);
    }

    /// Called by the instruction hook: true once the deadline has passed (and from then on).
    pub(crate) fn check_deadline(&self) -> bool {
        if !self.timed_out.get() && Instant::now() >= self.deadline.get() {
            self.timed_out.set(true);
        }
        self.timed_out.get()
    }

    pub fn timed_out(&self) -> bool {
        self.timed_out.get()
    }

    pub fn deadline(&self) -> Instant {
        self.deadline.get()
    }

    /// Time left for module I/O; zero once the deadline has passed.
    pub fn remaining(&self) -> Duration {
        self.deadline
            .get()
            .saturating_duration_since(Instant::now())
    }

    /// Records a transient module failure (kv unreachable, http transport error or 5xx): a
    /// script error after it is retryable. The first one is kept.
    pub fn record_transient_failure(&self, cause: impl Into<String>) {
        self.transient_cause
            .borrow_mut()
            .get_or_insert_with(|| cause.into());
    }

    pub fn transient_cause(&self) -> Option<String> {
        self.transient_cause.borrow().clone()
    }

    /// Records that the script asked for a crypto key this process lacks.
    pub fn record_missing_crypto_key(&self, name: &str) {
        self.missing_crypto_key
            .borrow_mut()
            .get_or_insert_with(|| name.to_owned());
    }

    pub fn missing_crypto_key(&self) -> Option<String> {
        self.missing_crypto_key.borrow().clone()
    }

    pub fn webhook_id(&self) -> Ref<'_, String> {
        self.webhook_id.borrow()
    }

    pub fn config_id(&self) -> Ref<'_, String> {
        self.config_id.borrow()
    }

    /// The tenant namespace: the config_id's text before its first `:` (SPEC §1).
    pub fn namespace(&self) -> Ref<'_, str> {
        Ref::map(self.config_id.borrow(), |id| crate::ids::namespace(id))
    }

    /// Takes one log line from the execution's allowance.
    pub(crate) fn take_log_line(&self) -> LogAllowance {
        let left = self.log_lines_left.get();
        self.log_lines_left.set(left.saturating_sub(1));
        match left {
            0 => LogAllowance::Dropped,
            1 => LogAllowance::LastOne,
            _ => LogAllowance::Write,
        }
    }
}

/// What may become of a script's log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LogAllowance {
    Write,
    /// The allowance is spent: write a warning saying the rest are dropped, instead of the line.
    LastOne,
    Dropped,
}
