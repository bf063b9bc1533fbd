//! The Lua engine: one sandboxed Lua 5.4 VM, a cache of compiled scripts keyed by hash, and
//! `execute`, which runs one script version against one webhook under hard limits.
//!
//! Isolation comes from a fresh environment per execution on a reused VM, not a fresh VM: a
//! sandboxed VM costs ~50 µs to build, a fresh environment a few hundred nanoseconds. Each script
//! compiles once, as `return function(_ENV, ...) <code> end`; an execution calls that function
//! with a new environment table whose `__index` is the shared, read-only sandbox base. Globals a
//! script sets land in its own environment and die with it.
//!
//! The wrapper cannot be escaped: the code is first compiled on its own, and a valid chunk is a
//! complete block, so it cannot close the wrapper's `function` early (`end ... return function`
//! tricks fail the first compile).
//!
//! Limits. Time: a global instruction-count hook (inherited by coroutines the script creates)
//! compares the clock with the deadline every `HOOK_INSTRUCTIONS` instructions and raises once
//! it has passed; the sandbox's `pcall` wrappers re-raise it, so a script cannot swallow it.
//! Memory: the VM's allocator refuses allocations past the execution's allowance. After either
//! limit trips, the VM is dropped and a new one is built for the next execution.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::ffi::{c_char, c_int};

use mlua::{Function, HookTriggers, Lua, LuaOptions, StdLib, Table, Value, VmState, ffi};

use super::context::ExecutionContext;
use super::convert::{self, ArrayMarkers};
use super::error::{ScriptError, ScriptErrorKind};
use super::modules::{self, LuaModule, ModuleContext};
use super::output;
use super::script::{Script, ScriptInput, TransformedRequest};
use super::template::TemplateResolver;
use super::transformer::{self, Post, PostContext, TransformerInput};

/// Instructions between two deadline checks. A check reads the monotonic clock (~25 ns); at
/// roughly 5 ns per instruction, 4096 instructions bound the overshoot to ~20 µs of Lua work
/// while keeping the check under 1 % of the run time.
const HOOK_INSTRUCTIONS: u32 = 4096;

/// Compiled scripts kept per VM. A VM serves every tenant, so this bounds its memory; when full,
/// the cache starts over (recompiling a script costs tens of microseconds).
const COMPILED_CACHE_CAPACITY: usize = 1024;

/// Name of the chunk in error messages: `script:3: attempt to index a nil value`.
const CHUNK_NAME: &str = "=script";

/// What every execution of an engine shares.
#[derive(Clone)]
pub struct EngineSettings {
    /// `lua.timeout`: wall-clock budget of one execution, module I/O included.
    pub timeout: Duration,
    /// `lua.memory_limit_mb` in bytes: what one execution may allocate.
    pub memory_limit_bytes: usize,
    /// Resolves `${VAR}` in `script_config` values.
    pub templates: TemplateResolver,
    /// Modules beyond the built-in `json`, `base64` and `log`.
    pub modules: Vec<Arc<dyn LuaModule>>,
}

impl std::fmt::Debug for EngineSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineSettings")
            .field("timeout", &self.timeout)
            .field("memory_limit_bytes", &self.memory_limit_bytes)
            .field(
                "modules",
                &self.modules.iter().map(|m| m.name()).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// A Lua engine: one VM at a time, used by one thread.
pub struct LuaEngine {
    settings: Arc<EngineSettings>,
    vm: Option<Vm>,
}

impl LuaEngine {
    pub fn new(settings: EngineSettings) -> Self {
        Self {
            settings: Arc::new(settings),
            vm: None,
        }
    }

    pub fn settings(&self) -> &EngineSettings {
        &self.settings
    }

    /// Checks that `code` compiles, without running it. The error names the line.
    pub fn validate(&mut self, code: &str) -> Result<(), ScriptError> {
        let settings = Arc::clone(&self.settings);
        let vm = self.vm()?;
        let ceiling = vm
            .lua
            .used_memory()
            .saturating_add(settings.memory_limit_bytes);
        vm.context
            .begin(Instant::now() + settings.timeout, ceiling, "", "");
        let result = vm
            .lua
            .load(code)
            .set_name(CHUNK_NAME)
            .into_function()
            .map(drop)
            .map_err(|error| classify_compile_error(&error));
        self.settle(&result);
        result
    }

    /// Runs `script` on `input` and returns the request to send, or why not.
    pub fn execute(
        &mut self,
        script: &Script,
        input: &ScriptInput<'_>,
    ) -> Result<TransformedRequest, ScriptError> {
        let metadata = &input.metadata;
        self.run_limited(metadata.webhook_id, metadata.config_id, |vm, settings| {
            vm.run(script, input, settings)
        })
    }

    /// Runs the transformer `script` on one incoming request (SPEC §7): the webhooks it posted,
    /// in order. Same VM, sandbox, modules and limits as `execute`.
    pub fn transform(
        &mut self,
        script: &Script,
        input: &TransformerInput,
        allowed_domains: &[String],
    ) -> Result<Vec<Post>, ScriptError> {
        self.run_limited("", &input.name, |vm, settings| {
            vm.run_transformer(script, input, allowed_domains, settings)
        })
    }

    /// Starts an execution's clock and memory allowance on the VM, runs `run`, and drops the VM
    /// if a limit tripped.
    fn run_limited<T>(
        &mut self,
        webhook_id: &str,
        config_id: &str,
        run: impl FnOnce(&mut Vm, &EngineSettings) -> Result<T, ScriptError>,
    ) -> Result<T, ScriptError> {
        let settings = Arc::clone(&self.settings);
        let vm = self.vm()?;
        let deadline = Instant::now() + settings.timeout;
        let ceiling = vm
            .lua
            .used_memory()
            .saturating_add(settings.memory_limit_bytes);
        vm.context.begin(deadline, ceiling, webhook_id, config_id);
        let result = run(vm, &settings);
        self.settle(&result);
        result
    }

    /// Drops the VM after a limit tripped: whatever state the abort left is not reused.
    fn settle<T>(&mut self, result: &Result<T, ScriptError>) {
        if let Err(error) = result
            && matches!(
                error.kind,
                ScriptErrorKind::Timeout | ScriptErrorKind::MemoryLimit
            )
        {
            self.vm = None;
        }
    }

    fn vm(&mut self) -> Result<&mut Vm, ScriptError> {
        if self.vm.is_none() {
            let vm = Vm::new(&self.settings).map_err(|error| {
                ScriptError::new(
                    ScriptErrorKind::Runtime,
                    format!("cannot create the Lua VM: {error}"),
                )
            })?;
            self.vm = Some(vm);
        }
        Ok(self.vm.as_mut().expect("created above"))
    }
}

/// One sandboxed VM and what is compiled into it.
struct Vm {
    lua: Lua,
    context: Rc<ExecutionContext>,
    /// Metatable of every execution's environment: `__index` = the sandbox base, protected.
    env_metatable: Table,
    markers: ArrayMarkers,
    compiled: HashMap<String, Function>,
}

impl Vm {
    fn new(settings: &EngineSettings) -> mlua::Result<Self> {
        let libs = StdLib::STRING | StdLib::TABLE | StdLib::MATH | StdLib::UTF8 | StdLib::OS;
        let lua = Lua::new_with(libs | StdLib::COROUTINE, LuaOptions::default())?;
        let context = Rc::new(ExecutionContext::default());

        let hook_context = Rc::clone(&context);
        lua.set_global_hook(
            HookTriggers::new().every_nth_instruction(HOOK_INSTRUCTIONS),
            move |_, _| {
                if hook_context.check_deadline() {
                    Err(mlua::Error::runtime("script timeout"))
                } else {
                    Ok(VmState::Continue)
                }
            },
        )?;

        // Before the sandbox prelude freezes the string library: the pattern functions that
        // stop at the deadline replace the C ones.
        super::pattern::install(&lua, &context)?;

        let protected = |name: &str| -> mlua::Result<Table> {
            let mt = lua.create_table()?;
            mt.raw_set("__metatable", name)?;
            Ok(mt)
        };
        let empty_array = protected("json.array")?;
        empty_array.raw_set(
            "__newindex",
            lua.create_function(|_, ()| -> mlua::Result<()> {
                Err(mlua::Error::runtime(
                    "json.empty_array is read-only; use json.array() for a new array",
                ))
            })?,
        )?;
        let markers = ArrayMarkers {
            array: protected("json.array")?,
            empty_array,
        };

        let module_context = ModuleContext {
            execution: Rc::clone(&context),
            markers: markers.clone(),
        };
        let module_tables = lua.create_table()?;
        let frozen = lua.create_table()?;
        for module in modules::builtin().iter().chain(&settings.modules) {
            let table = module.build(&lua, &module_context)?;
            // Tables a module exposes inside its table (json.empty_array) are read-only too.
            table.for_each(|_: Value, value: Value| {
                if let Value::Table(inner) = value {
                    frozen.raw_push(inner)?;
                }
                Ok(())
            })?;
            module_tables.raw_set(module.name(), table)?;
        }

        let host = lua.create_table()?;
        let abort_context = Rc::clone(&context);
        host.raw_set(
            "aborted",
            lua.create_function(move |_, ()| Ok(abort_context.timed_out()))?,
        )?;
        // For sandbox loops whose iterations are single expensive C calls (chunked table
        // functions): the instruction hook would fire only every few hundred of them.
        let deadline_context = Rc::clone(&context);
        host.raw_set(
            "check_deadline",
            lua.create_function(move |_, ()| {
                if deadline_context.check_deadline() {
                    Err(mlua::Error::runtime("script timeout"))
                } else {
                    Ok(())
                }
            })?,
        )?;
        let print_context = Rc::clone(&context);
        host.raw_set(
            "log_line",
            lua.create_function(move |_, message: mlua::LuaString| {
                modules::log::emit(
                    &print_context,
                    modules::log::Level::Info,
                    &message.to_string_lossy(),
                    "",
                );
                Ok(())
            })?,
        )?;
        host.raw_set("modules", module_tables)?;
        host.raw_set("frozen", frozen)?;

        let base: Table = lua
            .load(include_str!("sandbox.lua"))
            .set_name("=sandbox")
            .call(host)?;
        let env_metatable = lua.create_table()?;
        env_metatable.raw_set("__index", base)?;
        env_metatable.raw_set("__metatable", false)?;

        Ok(Self {
            lua,
            context,
            env_metatable,
            markers,
            compiled: HashMap::new(),
        })
    }

    fn run(
        &mut self,
        script: &Script,
        input: &ScriptInput<'_>,
        settings: &EngineSettings,
    ) -> Result<TransformedRequest, ScriptError> {
        // Compiling, building the environment and reading the outputs are the engine's own work,
        // bounded by the webhook's size: they run without the memory limit, which makes mlua
        // skip its per-operation protection. Script code runs under the limit.
        let function = self.compiled(script)?;
        let env = self
            .environment(script, input, &settings.templates)
            .map_err(|error| self.classify(&error))?;
        self.call_under_limit(&function, env.clone())?;
        output::extract(&env, input.headers).map_err(|error| match error {
            output::OutputError::Invalid(message) => {
                ScriptError::new(ScriptErrorKind::InvalidOutput, message)
            }
            output::OutputError::Lua(error) => self.classify(&error),
        })
    }

    fn run_transformer(
        &mut self,
        script: &Script,
        input: &TransformerInput,
        allowed_domains: &[String],
        settings: &EngineSettings,
    ) -> Result<Vec<Post>, ScriptError> {
        let function = self.compiled(script)?;
        let posts = Rc::new(RefCell::new(Vec::new()));
        let context = PostContext {
            name: input.name.clone(),
            allowed_domains: allowed_domains.to_vec(),
            markers: self.markers.clone(),
            execution: Rc::clone(&self.context),
            posts: Rc::clone(&posts),
            budget: settings.memory_limit_bytes,
        };
        let env = self
            .transformer_environment(script, input, context)
            .map_err(|error| self.classify(&error))?;
        self.call_under_limit(&function, env)?;
        Ok(posts.take())
    }

    /// Calls a compiled script with its environment, under the execution's memory limit.
    fn call_under_limit(&self, function: &Function, env: Table) -> Result<(), ScriptError> {
        // Only fails when the allocator is not mlua's, which `Lua::new_with` rules out.
        let _ = self.lua.set_memory_limit(self.context.memory_ceiling());
        let called = function.call::<()>(env);
        let _ = self.lua.set_memory_limit(0);
        called.map_err(|error| self.classify(&error))
    }

    /// A fresh environment with a transformer's globals: `incoming`, `headers`, `config` and
    /// `howk`. Built with mlua calls: one per request, not per webhook.
    fn transformer_environment(
        &self,
        script: &Script,
        input: &TransformerInput,
        context: PostContext,
    ) -> mlua::Result<Table> {
        let lua = &self.lua;
        let env = lua.create_table()?;
        env.set_metatable(Some(self.env_metatable.clone()))?;
        env.raw_set("_G", &env)?;
        env.raw_set("incoming", lua.create_string(&input.incoming)?)?;
        // Names in lower case, looked up in any case: HOWK's scripts read
        // `headers["Content-Type"]`, HTTP/2 and hyper give `content-type`.
        let headers = lua.create_table()?;
        for (name, value) in &input.headers {
            headers.raw_set(name.to_ascii_lowercase(), value.as_str())?;
        }
        let any_case = lua.create_table()?;
        any_case.raw_set(
            "__index",
            lua.create_function(|_, (table, key): (Table, Value)| match key {
                Value::String(name) => {
                    table.raw_get::<Value>(name.to_string_lossy().to_ascii_lowercase())
                }
                _ => Ok(Value::Nil),
            })?,
        )?;
        any_case.raw_set("__metatable", false)?;
        headers.set_metatable(Some(any_case))?;
        env.raw_set("headers", headers)?;
        let config = match script.config.as_deref() {
            Some(value @ serde_json::Value::Object(_)) => {
                convert::from_json_value(lua, &self.markers, value, &|_| None)?
            }
            _ => Value::Table(lua.create_table()?),
        };
        env.raw_set("config", config)?;
        env.raw_set("howk", transformer::howk_table(lua, context)?)?;
        Ok(env)
    }

    /// The compiled function of `script`, compiling it on first use.
    fn compiled(&mut self, script: &Script) -> Result<Function, ScriptError> {
        if let Some(function) = self.compiled.get(&script.hash) {
            return Ok(function.clone());
        }
        // A valid chunk on its own first: this gives the user's error and line, and proves the
        // wrapper below cannot be closed early by the code.
        self.lua
            .load(&*script.code)
            .set_name(CHUNK_NAME)
            .into_function()
            .map_err(|error| classify_compile_error(&error))?;
        let wrapped = format!("return function(_ENV, ...) {}\nend", script.code);
        let function: Function = self
            .lua
            .create_table()
            .and_then(|empty_env| {
                self.lua
                    .load(wrapped)
                    .set_name(CHUNK_NAME)
                    .set_environment(empty_env)
                    .call(())
            })
            .map_err(|error| classify_compile_error(&error))?;
        if self.compiled.len() >= COMPILED_CACHE_CAPACITY {
            self.compiled.clear();
        }
        self.compiled.insert(script.hash.clone(), function.clone());
        Ok(function)
    }

    /// A fresh environment holding the SPEC §4 input globals.
    ///
    /// Built with raw C API pushes in one protected call: per-field mlua calls each cost a
    /// registry handle and were most of a header-only execution. Runs with the memory limit
    /// lifted (see `run`), where none of these calls can raise.
    fn environment(
        &self,
        script: &Script,
        input: &ScriptInput<'_>,
        templates: &TemplateResolver,
    ) -> mlua::Result<Table> {
        let config = match script.config.as_deref() {
            Some(value @ serde_json::Value::Object(_)) => {
                let resolve = |text: &str| {
                    TemplateResolver::has_reference(text).then(|| templates.resolve(text))
                };
                convert::from_json_value(&self.lua, &self.markers, value, &resolve)?
            }
            _ => Value::Nil,
        };
        // Stack inside: 1 = environment metatable, 2 = config table or nil.
        unsafe {
            self.lua.exec_raw((&self.env_metatable, config), |state| {
                build_environment(state, input)
            })
        }
    }

    /// Turns a Lua error of this execution into its SPEC class.
    fn classify(&self, error: &mlua::Error) -> ScriptError {
        let context = &self.context;
        let message = describe(error);
        let kind = if context.timed_out() {
            ScriptErrorKind::Timeout
        } else if is_memory_error(error) || message.ends_with("not enough memory") {
            ScriptErrorKind::MemoryLimit
        } else if context.missing_crypto_key().is_some() {
            ScriptErrorKind::CryptoKeyNotFound
        } else {
            ScriptErrorKind::Runtime
        };
        let message = match kind {
            ScriptErrorKind::Timeout => "script exceeded its time limit".to_owned(),
            ScriptErrorKind::MemoryLimit => "script exceeded its memory limit".to_owned(),
            _ => message,
        };
        ScriptError {
            kind,
            message,
            transient_cause: context.transient_cause(),
        }
    }
}

fn classify_compile_error(error: &mlua::Error) -> ScriptError {
    if is_memory_error(error) {
        return ScriptError::new(
            ScriptErrorKind::MemoryLimit,
            "script exceeded its memory limit while compiling",
        );
    }
    ScriptError::new(ScriptErrorKind::Syntax, describe(error))
}

/// The Lua message with its position, without mlua's wrapping and tracebacks.
fn describe(error: &mlua::Error) -> String {
    match error {
        mlua::Error::RuntimeError(message) | mlua::Error::MemoryError(message) => message.clone(),
        mlua::Error::SyntaxError { message, .. } => message.clone(),
        mlua::Error::CallbackError { cause, .. } => describe(cause),
        mlua::Error::WithContext { cause, .. } => describe(cause),
        other => other.to_string(),
    }
}

fn is_memory_error(error: &mlua::Error) -> bool {
    match error {
        mlua::Error::MemoryError(_) => true,
        mlua::Error::CallbackError { cause, .. } | mlua::Error::WithContext { cause, .. } => {
            is_memory_error(cause)
        }
        _ => false,
    }
}

/// Pushes a new environment table built from `input` (see [`Vm::environment`]) and leaves it as
/// the only value on the stack.
///
/// # Safety
/// `state` must hold the environment metatable at 1 and the config (table or nil) at 2, with
/// the memory limit lifted.
unsafe fn build_environment(state: *mut ffi::lua_State, input: &ScriptInput<'_>) {
    unsafe fn push_bytes(state: *mut ffi::lua_State, bytes: &[u8]) {
        unsafe { ffi::lua_pushlstring(state, bytes.as_ptr().cast::<c_char>(), bytes.len()) };
    }
    /// `table[key] = <value on top>`, raw.
    unsafe fn set(state: *mut ffi::lua_State, table: c_int, key: &str) {
        unsafe {
            push_bytes(state, key.as_bytes());
            ffi::lua_rotate(state, -2, 1);
            ffi::lua_rawset(state, table);
        }
    }
    unsafe {
        ffi::lua_checkstack(state, 8);
        ffi::lua_createtable(state, 0, 8);
        let env = ffi::lua_gettop(state);
        ffi::lua_pushvalue(state, 1);
        ffi::lua_setmetatable(state, env);
        ffi::lua_pushvalue(state, env);
        set(state, env, "_G");
        push_bytes(state, input.payload);
        set(state, env, "payload");

        ffi::lua_createtable(state, 0, input.headers.len() as c_int);
        for (name, value) in input.headers {
            push_bytes(state, name.as_bytes());
            push_bytes(state, value.as_bytes());
            ffi::lua_rawset(state, -3);
        }
        set(state, env, "headers");

        let meta = &input.metadata;
        ffi::lua_createtable(state, 0, 5);
        let metadata = ffi::lua_gettop(state);
        push_bytes(state, meta.webhook_id.as_bytes());
        set(state, metadata, "webhook_id");
        push_bytes(state, meta.config_id.as_bytes());
        set(state, metadata, "config_id");
        ffi::lua_pushinteger(state, i64::from(meta.attempt));
        set(state, metadata, "attempt");
        ffi::lua_pushinteger(state, i64::from(meta.max_attempts));
        set(state, metadata, "max_attempts");
        push_bytes(state, meta.created_at.as_bytes());
        set(state, metadata, "created_at");
        set(state, env, "metadata");

        if let Some(previous) = input.previous_error {
            ffi::lua_createtable(state, 0, 3);
            let table = ffi::lua_gettop(state);
            if let Some(status) = previous.status_code {
                ffi::lua_pushinteger(state, i64::from(status));
                set(state, table, "status_code");
            }
            push_bytes(state, previous.error.as_bytes());
            set(state, table, "error");
            ffi::lua_pushinteger(state, i64::from(previous.attempt));
            set(state, table, "attempt");
            set(state, env, "previous_error");
        }

        if ffi::lua_type(state, 2) == ffi::LUA_TTABLE {
            ffi::lua_pushvalue(state, 2);
        } else {
            ffi::lua_createtable(state, 0, 0);
        }
        set(state, env, "config");

        ffi::lua_createtable(state, 0, 3);
        ffi::lua_createtable(state, 0, 0);
        set(state, ffi::lua_gettop(state) - 1, "headers");
        set(state, env, "request");

        ffi::lua_replace(state, 1);
        ffi::lua_settop(state, 1);
    }
}
