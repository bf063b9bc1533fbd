//! The Lua engine: tenants' scripts run here, once per delivery attempt, in a sandbox with hard
//! time and memory limits (SPEC §4).
//!
//! Flavour: **Lua 5.4** through mlua, chosen on evidence. It has native 64-bit integers, so
//! ids beyond 2^53 survive `json.decode`/`json.encode` exactly; it runs HOWK's Lua 5.1 idioms
//! (`unpack` is aliased, patterns and `#` behave the same); its count hook stops any Lua loop,
//! coroutines included; and mlua's allocator enforces a byte limit on real allocations. Luau
//! has no integers (every number is a double, so a 64-bit id would round) and built a sandboxed
//! state 5× slower in the probe; LuaJIT cannot enforce a memory limit and its JIT-compiled loops
//! do not run hooks, so a `while true do end` could not be stopped.
//!
//! Layout, in the order an execution meets it:
//! - [`script`]: the script, its input and its output types
//! - [`engine`]: the VM, compile cache, limits, and `execute`
//! - `sandbox.lua`: the prelude that builds the read-only sandbox base, once per VM
//! - `pattern`: Lua patterns (`find`, `match`, `gmatch`, `gsub`) that stop at the deadline
//! - [`context`]: the execution in progress, shared with the hook and the modules
//! - [`convert`]: JSON ↔ Lua without an intermediate tree
//! - [`template`]: `${VAR}` resolution with the variable rules
//! - [`modules`]: the module seam and the modules: `json`, `base64`, `log`, `kv` (Redis),
//!   `http` (allowlisted, SSRF-safe), `crypto` (RSA-OAEP + AES-GCM)
//! - `output`: reading `request`, `headers` and `config` back
//! - [`error`]: the SPEC error classes and what is retryable
//! - [`report`]: a test run's outcome, as the API and the CLI show it
//! - [`pool`]: engine threads for async callers, with the watchdog for stuck library calls
//! - [`config`]: the `lua` configuration section
//! - [`transformer`]: incoming transformers (SPEC §7): their globals and `howk.post`
//!
//! Uninterruptible C calls. The hook only runs between Lua instructions, so a C library
//! function that loops without allocating would escape both limits. The pattern functions are
//! therefore [`pattern`]'s deadline-checking matcher, and `sandbox.lua` runs the table functions
//! that loop over caller-given ranges in chunks. [`pool`] keeps a watchdog as the last line: an
//! execution stuck past its deadline plus a grace period is abandoned, its thread replaced, up
//! to a cap past which the pool reports itself degraded and refuses the offending script.

pub mod config;
pub mod context;
pub mod convert;
pub mod engine;
pub mod error;
pub mod modules;
mod output;
mod pattern;
pub mod pool;
pub mod report;
pub mod script;
pub mod template;
pub mod transformer;

pub use config::{LuaConfig, ModuleSetupError};
pub use engine::{EngineSettings, LuaEngine};
pub use error::{ScriptError, ScriptErrorKind};
pub use report::TestReport;
pub use script::{PreviousError, Script, ScriptInput, ScriptMetadata, TransformedRequest};
