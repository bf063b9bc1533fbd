//! The ways a script can fail, and what each means for the webhook: the SPEC §2 dead-letter
//! reason, and whether the failure is worth a retry.
//!
//! Only one thing makes a script failure retryable: a *transient module failure* earlier in the
//! same execution (kv unreachable, an http transport error or 5xx). The script then most likely
//! failed because of it, and the same script may well succeed on the next attempt. Every other
//! failure is the script's own and would fail again: it is dead-lettered at once.

use std::fmt;

/// The class of a script failure; each maps to one SPEC dead-letter `reason_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScriptErrorKind {
    /// Lua is disabled but the webhook has or pins a script.
    Disabled,
    /// The webhook pins a script that does not exist (or was deleted).
    NotFound,
    /// The script does not compile.
    Syntax,
    /// The script raised an error, or called something that failed.
    Runtime,
    /// The script ran past `lua.timeout` (wall clock, module I/O included).
    Timeout,
    /// The script allocated past `lua.memory_limit_mb`.
    MemoryLimit,
    /// The script finished but left something unusable in `request` or `headers`.
    InvalidOutput,
    /// The script raised after `crypto.decrypt_credential` named a key this process lacks.
    CryptoKeyNotFound,
}

impl ScriptErrorKind {
    /// The SPEC §2 dead-letter `reason_type` (also the `error_type` of the test endpoint).
    pub fn reason_type(self) -> &'static str {
        match self {
            Self::Disabled => "script_disabled",
            Self::NotFound => "script_not_found",
            Self::Syntax => "script_syntax_error",
            Self::Runtime => "script_runtime_error",
            Self::Timeout => "script_timeout",
            Self::MemoryLimit => "script_memory_limit",
            Self::InvalidOutput => "script_invalid_output",
            Self::CryptoKeyNotFound => "crypto_key_not_found",
        }
    }
}

/// A failed script execution or compilation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptError {
    pub kind: ScriptErrorKind,
    /// Human text for logs, results and the dead letter: the Lua message with its line.
    pub message: String,
    /// The transient module failure seen earlier in this execution, if any (`kv.get: connection
    /// refused`). Its presence makes the failure retryable.
    pub transient_cause: Option<String>,
}

impl ScriptError {
    pub fn new(kind: ScriptErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            transient_cause: None,
        }
    }

    /// Whether the webhook should be retried with backoff instead of dead-lettered (SPEC §4).
    pub fn is_retryable(&self) -> bool {
        self.transient_cause.is_some()
            && matches!(
                self.kind,
                ScriptErrorKind::Runtime | ScriptErrorKind::Timeout
            )
    }

    /// The SPEC §2 dead-letter `reason_type`.
    pub fn reason_type(&self) -> &'static str {
        self.kind.reason_type()
    }
}

impl fmt::Display for ScriptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.reason_type(), self.message)?;
        if let Some(cause) = &self.transient_cause {
            write!(f, " (after transient module failure: {cause})")?;
        }
        Ok(())
    }
}

impl std::error::Error for ScriptError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_runtime_and_timeout_after_a_transient_failure_are_retryable() {
        let mut error = ScriptError::new(ScriptErrorKind::Runtime, "boom");
        assert!(!error.is_retryable());
        error.transient_cause = Some("kv.get: connection refused".into());
        assert!(error.is_retryable());
        error.kind = ScriptErrorKind::Syntax;
        assert!(!error.is_retryable());
    }
}
