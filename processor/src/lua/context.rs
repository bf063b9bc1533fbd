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
    /// The VM's memory ceiling for this execution, in bytes (what it held at the start plus
    /// `lua.memory_limit_mb`). Applied while script code runs; see [`ExecutionContext::bulk`].
    memory_ceiling: Cell<usize>,
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
            memory_ceiling: Cell::new(0),
        }
    }
}

impl ExecutionContext {
    /// Prepares for a new execution.
    pub(crate) fn begin(
        &self,
        deadline: Instant,
        memory_ceiling: usize,
        webhook_id: &str,
        config_id: &str,
    ) {
        self.memory_ceiling.set(memory_ceiling);
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

    /// Whether `estimate` more bytes fit in what the execution has left, so that code which
    /// cannot be interrupted by a refused allocation may run with the limit lifted.
    pub fn can_lift_memory_limit(&self, lua: &mlua::Lua, estimate: usize) -> bool {
        let ceiling = self.memory_ceiling.get();
        ceiling == 0 || lua.used_memory().saturating_add(estimate) < ceiling
    }

    /// Bytes the execution may still allocate (`usize::MAX` outside an execution).
    pub fn memory_left(&self, lua: &mlua::Lua) -> usize {
        match self.memory_ceiling.get() {
            0 => usize::MAX,
            ceiling => ceiling.saturating_sub(lua.used_memory()),
        }
    }

    /// Runs `build` — Rust code creating at most `estimate` bytes of Lua values — with the
    /// memory limit lifted, then checks the ceiling.
    ///
    /// With a memory limit set, mlua wraps every table and string operation in a protected call
    /// (it must catch a refused allocation), and the raw converters must never meet a refused
    /// allocation at all. Callers check [`Self::can_lift_memory_limit`] first.
    pub fn bulk<R>(
        &self,
        lua: &mlua::Lua,
        estimate: usize,
        build: impl FnOnce() -> mlua::Result<R>,
    ) -> mlua::Result<R> {
        let ceiling = self.memory_ceiling.get();
        debug_assert!(self.can_lift_memory_limit(lua, estimate));
        if ceiling == 0 {
            return build();
        }
        let _ = lua.set_memory_limit(0);
        let result = build();
        let _ = lua.set_memory_limit(ceiling);
        if lua.used_memory() > ceiling {
            return Err(mlua::Error::MemoryError("not enough memory".into()));
        }
        result
    }

    pub(crate) fn memory_ceiling(&self) -> usize {
        self.memory_ceiling.get()
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
