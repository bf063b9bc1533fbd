//! The module seam: every Lua module (`json`, `base64`, `log`, and `kv`, `http`, `crypto` from
//! their own files) implements [`LuaModule`]. A module builds its table once per VM; its
//! functions read the execution in progress through the shared [`ExecutionContext`], so one
//! table serves every execution without holding per-webhook state.
//!
//! The sandbox exposes each module both as a global and through `require("name")` (HOWK scripts
//! use both), behind a read-only proxy.

pub mod base64;
pub mod crypto;
pub mod http;
pub mod io;
pub mod json;
pub mod kv;
pub mod log;

use std::rc::Rc;

use mlua::{Lua, Table};

use super::context::ExecutionContext;
use super::convert::ArrayMarkers;

/// What a module gets from the VM it is built into.
pub struct ModuleContext {
    pub execution: Rc<ExecutionContext>,
    pub markers: ArrayMarkers,
}

/// A Lua module: a name and a table of functions.
pub trait LuaModule: Send + Sync {
    /// The global and `require` name.
    fn name(&self) -> &'static str;

    /// Builds the module's table in `lua`. Called once per VM.
    fn build(&self, lua: &Lua, context: &ModuleContext) -> mlua::Result<Table>;
}

/// The modules every engine has: `json`, `base64`, `log`.
pub fn builtin() -> Vec<std::sync::Arc<dyn LuaModule>> {
    vec![
        std::sync::Arc::new(json::JsonModule),
        std::sync::Arc::new(base64::Base64Module),
        std::sync::Arc::new(log::LogModule),
    ]
}
