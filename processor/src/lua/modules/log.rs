//! `log`: `debug/info/warn/error(msg, fields?)`, structured through `tracing` under the target
//! `howk::script`, tagged with the webhook and config ids. `print(...)` (the seed's examples use
//! it) writes at info level through the same path.
//!
//! An execution may write `MAX_LOG_LINES_PER_EXECUTION` lines; after that, one warning says the
//! rest were dropped, so a script logging in a loop cannot flood the logs.

use std::rc::Rc;

use mlua::{Lua, Table, Value};

use super::{LuaModule, ModuleContext};
use crate::lua::context::{ExecutionContext, LogAllowance};
use crate::lua::convert::{self, ArrayMarkers};

pub struct LogModule;

#[derive(Debug, Clone, Copy)]
pub(crate) enum Level {
    Debug,
    Info,
    Warn,
    Error,
}

impl LuaModule for LogModule {
    fn name(&self) -> &'static str {
        "log"
    }

    fn build(&self, lua: &Lua, context: &ModuleContext) -> mlua::Result<Table> {
        let module = lua.create_table()?;
        for (name, level) in [
            ("debug", Level::Debug),
            ("info", Level::Info),
            ("warn", Level::Warn),
            ("error", Level::Error),
        ] {
            let execution = Rc::clone(&context.execution);
            let markers = context.markers.clone();
            module.raw_set(
                name,
                lua.create_function(move |lua, (message, fields): (Value, Option<Value>)| {
                    let message = match &message {
                        Value::String(s) => s.to_string_lossy(),
                        other => format!("{other:?}"),
                    };
                    let fields = fields
                        .map(|fields| render_fields(lua, &markers, &fields))
                        .unwrap_or_default();
                    emit(&execution, level, &message, &fields);
                    Ok(())
                })?,
            )?;
        }
        Ok(module)
    }
}

/// Log fields as JSON, at most `MAX_FIELDS_BYTES`.
fn render_fields(lua: &Lua, markers: &ArrayMarkers, fields: &Value) -> String {
    const MAX_FIELDS_BYTES: usize = 4096;
    match convert::encode(lua, markers, fields, MAX_FIELDS_BYTES) {
        Ok(Ok(bytes)) => String::from_utf8_lossy(&bytes).into_owned(),
        Ok(Err(error)) => format!("<fields not encodable: {error}>"),
        Err(error) => format!("<fields not readable: {error}>"),
    }
}

/// Writes one script log line, within the execution's allowance.
pub(crate) fn emit(execution: &ExecutionContext, level: Level, message: &str, fields: &str) {
    let allowance = execution.take_log_line();
    if allowance == LogAllowance::Dropped {
        return;
    }
    let webhook_id = execution.webhook_id();
    let config_id = execution.config_id();
    let (webhook_id, config_id) = (webhook_id.as_str(), config_id.as_str());
    if allowance == LogAllowance::LastOne {
        tracing::warn!(
            target: "howk::script",
            webhook_id,
            config_id,
            "script log limit reached; further lines of this execution are dropped"
        );
        return;
    }
    match level {
        Level::Debug => {
            tracing::debug!(target: "howk::script", webhook_id, config_id, fields, "{message}")
        }
        Level::Info => {
            tracing::info!(target: "howk::script", webhook_id, config_id, fields, "{message}")
        }
        Level::Warn => {
            tracing::warn!(target: "howk::script", webhook_id, config_id, fields, "{message}")
        }
        Level::Error => {
            tracing::error!(target: "howk::script", webhook_id, config_id, fields, "{message}")
        }
    }
}
