//! The bridge from module functions — called synchronously on the engine's thread — to async I/O
//! on the tokio runtime (Redis, HTTP). The engine runs off the reactor (a blocking-pool thread or
//! a dedicated one), so waiting here blocks no async task.

use std::future::Future;
use std::sync::mpsc;
use std::time::Duration;

use tokio::runtime::Handle;

/// A handle on the runtime where module I/O runs.
#[derive(Debug, Clone)]
pub struct IoRuntime {
    handle: Handle,
}

/// The I/O did not finish within its time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("timed out after {0:?}")]
pub struct IoTimeout(pub Duration);

impl IoRuntime {
    pub fn new(handle: Handle) -> Self {
        Self { handle }
    }

    /// The runtime the caller runs in.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn current() -> Self {
        Self::new(Handle::current())
    }

    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Runs `future` on the runtime and waits for it at most `timeout`; on timeout the task is
    /// cancelled. Must not be called from a task of a current-thread runtime (it would wait for
    /// itself).
    pub fn run<T: Send + 'static>(
        &self,
        timeout: Duration,
        future: impl Future<Output = T> + Send + 'static,
    ) -> Result<T, IoTimeout> {
        let (sender, receiver) = mpsc::sync_channel(1);
        let task = self.handle.spawn(async move {
            if let Ok(value) = tokio::time::timeout(timeout, future).await {
                let _ = sender.send(value);
            }
        });
        // The task's own timer ends it; the margin covers scheduling delay.
        match receiver.recv_timeout(timeout + Duration::from_millis(50)) {
            Ok(value) => Ok(value),
            Err(_) => {
                task.abort();
                Err(IoTimeout(timeout))
            }
        }
    }
}
