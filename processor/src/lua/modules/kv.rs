//! `kv`: a small key-value store for scripts — tokens, cursors, counters — in Redis, the only thing
//! howk uses Redis for (SPEC §4).
//!
//! `kv.get(k)` → string | nil | `(nil, err)`; `kv.set(k, v, ttl_secs?)` → nil | err;
//! `kv.del(k)` → nil | err. Keys are `kv:{namespace}:{key}`, the namespace being the config_id's
//! text before its first `:` — so `music:1` and `music:2` share keys and `video` does not see
//! them. Without `ttl_secs`, `lua.kv_ttl_default` applies; `ttl_secs = 0` stores without expiry
//! (HOWK's meaning). A failed call is a **transient module failure**: it returns the error to the
//! script and makes a later script error retryable.
//!
//! The [`Kv`] trait is the seam: [`RedisKv`] in production and the integration tests,
//! [`MemoryKv`] for `howk dev` and unit tests.

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mlua::{Lua, MultiValue, Table, Value};
use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::{Deserialize, Serialize};

use super::io::IoRuntime;
use super::{LuaModule, ModuleContext};

/// Longest key a script may use (before the namespace prefix).
const MAX_KEY_BYTES: usize = 512;
/// Largest value a script may store.
const MAX_VALUE_BYTES: usize = 1024 * 1024;

/// Why a kv call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Backend(String),
}

/// A key-value store with expiry. Calls block the calling thread for at most `timeout`.
pub trait Kv: Send + Sync {
    fn get(&self, key: &str, timeout: Duration) -> Result<Option<Vec<u8>>, KvError>;
    /// `ttl = None` stores without expiry.
    fn set(
        &self,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
        timeout: Duration,
    ) -> Result<(), KvError>;
    fn del(&self, key: &str, timeout: Duration) -> Result<(), KvError>;
}

/// `redis.*`: the Redis behind the `kv` module.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// `host:port`, or a full `redis://` URL. Default `127.0.0.1:6379`.
    pub addr: String,
    /// Password (AUTH), if the server needs one. Default none.
    pub password: Option<String>,
    /// Database number. Default 0.
    pub db: i64,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            addr: "127.0.0.1:6379".to_owned(),
            password: None,
            db: 0,
        }
    }
}

impl RedisConfig {
    fn url(&self) -> String {
        if self.addr.contains("://") {
            return self.addr.clone();
        }
        match &self.password {
            Some(password) => format!("redis://:{password}@{}/{}", self.addr, self.db),
            None => format!("redis://{}/{}", self.addr, self.db),
        }
    }
}

/// Redis through a connection manager that connects on first use and reconnects by itself, so
/// howk starts without Redis and recovers when it returns, without a restart.
pub struct RedisKv {
    io: IoRuntime,
    manager: ConnectionManager,
}

impl RedisKv {
    /// Connects lazily: a Redis that is down now is not an error until a call needs it.
    pub fn new(config: &RedisConfig, io: IoRuntime) -> Result<Self, KvError> {
        let client = redis::Client::open(config.url())
            .map_err(|error| KvError::Backend(format!("invalid redis address: {error}")))?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            // Fail a call fast while Redis is down; the next call tries again.
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(200));
        let _entered = io.handle().enter();
        let manager = ConnectionManager::new_lazy_with_config(client, manager_config)
            .map_err(|error| KvError::Backend(error.to_string()))?;
        Ok(Self { io, manager })
    }

    fn call<T: Send + 'static>(
        &self,
        timeout: Duration,
        call: impl Future<Output = redis::RedisResult<T>> + Send + 'static,
    ) -> Result<T, KvError> {
        match self.io.run(timeout, call) {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(KvError::Backend(error.to_string())),
            Err(timeout) => Err(KvError::Timeout(timeout.0)),
        }
    }
}

impl Kv for RedisKv {
    fn get(&self, key: &str, timeout: Duration) -> Result<Option<Vec<u8>>, KvError> {
        let (mut redis, key) = (self.manager.clone(), key.to_owned());
        self.call(timeout, async move {
            redis.get::<_, Option<Vec<u8>>>(key).await
        })
    }

    fn set(
        &self,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
        timeout: Duration,
    ) -> Result<(), KvError> {
        let (mut redis, key, value) = (self.manager.clone(), key.to_owned(), value.to_vec());
        self.call(timeout, async move {
            match ttl {
                Some(ttl) => {
                    let millis = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
                    redis.pset_ex::<_, _, ()>(key, value, millis).await
                }
                None => redis.set::<_, _, ()>(key, value).await,
            }
        })
    }

    fn del(&self, key: &str, timeout: Duration) -> Result<(), KvError> {
        let (mut redis, key) = (self.manager.clone(), key.to_owned());
        self.call(timeout, async move { redis.del::<_, ()>(key).await })
    }
}

/// A stored value and when it expires (`None`: never).
type Entry = (Vec<u8>, Option<Instant>);

/// An in-process store with the same semantics, for `howk dev` and unit tests.
#[derive(Debug, Default)]
pub struct MemoryKv {
    entries: Mutex<HashMap<String, Entry>>,
}

impl Kv for MemoryKv {
    fn get(&self, key: &str, _timeout: Duration) -> Result<Option<Vec<u8>>, KvError> {
        let mut entries = self.entries.lock().expect("kv lock poisoned");
        match entries.get(key) {
            Some((_, Some(expiry))) if *expiry <= Instant::now() => {
                entries.remove(key);
                Ok(None)
            }
            Some((value, _)) => Ok(Some(value.clone())),
            None => Ok(None),
        }
    }

    fn set(
        &self,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
        _timeout: Duration,
    ) -> Result<(), KvError> {
        let expiry = ttl.map(|ttl| Instant::now() + ttl);
        self.entries
            .lock()
            .expect("kv lock poisoned")
            .insert(key.to_owned(), (value.to_vec(), expiry));
        Ok(())
    }

    fn del(&self, key: &str, _timeout: Duration) -> Result<(), KvError> {
        self.entries.lock().expect("kv lock poisoned").remove(key);
        Ok(())
    }
}

/// The `kv` Lua module over any [`Kv`].
pub struct KvModule {
    kv: Arc<dyn Kv>,
    /// `lua.kv_ttl_default`.
    default_ttl: Duration,
    /// `lua.kv_timeout`: the most one call may take (less when the execution has less left).
    call_timeout: Duration,
}

impl KvModule {
    pub fn new(kv: Arc<dyn Kv>, default_ttl: Duration, call_timeout: Duration) -> Self {
        Self {
            kv,
            default_ttl,
            call_timeout,
        }
    }
}

/// `kv:{namespace}:{key}`, or why the key is unusable.
fn storage_key(namespace: &str, key: &mlua::LuaString) -> Result<String, String> {
    let key = key
        .to_str()
        .map_err(|_| "kv key must be UTF-8 text".to_owned())?;
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(format!("kv key must be 1 to {MAX_KEY_BYTES} bytes"));
    }
    Ok(format!("kv:{namespace}:{key}"))
}

fn error_value(lua: &Lua, message: &str) -> mlua::Result<Value> {
    Ok(Value::String(lua.create_string(message)?))
}

impl LuaModule for KvModule {
    fn name(&self) -> &'static str {
        "kv"
    }

    fn build(&self, lua: &Lua, context: &ModuleContext) -> mlua::Result<Table> {
        let module = lua.create_table()?;
        let call_timeout = self.call_timeout;

        let (kv, execution) = (Arc::clone(&self.kv), Rc::clone(&context.execution));
        module.raw_set(
            "get",
            lua.create_function(move |lua, key: mlua::LuaString| {
                let key = match storage_key(&execution.namespace(), &key) {
                    Ok(key) => key,
                    Err(message) => {
                        return Ok(MultiValue::from_iter([
                            Value::Nil,
                            error_value(lua, &message)?,
                        ]));
                    }
                };
                let timeout = call_timeout.min(execution.remaining());
                Ok(match kv.get(&key, timeout) {
                    Ok(Some(value)) => {
                        MultiValue::from_iter([Value::String(lua.create_string(value)?)])
                    }
                    Ok(None) => MultiValue::from_iter([Value::Nil]),
                    Err(error) => {
                        let message = format!("kv.get: {error}");
                        execution.record_transient_failure(&message);
                        MultiValue::from_iter([Value::Nil, error_value(lua, &message)?])
                    }
                })
            })?,
        )?;

        let (kv, execution) = (Arc::clone(&self.kv), Rc::clone(&context.execution));
        let default_ttl = self.default_ttl;
        module.raw_set(
            "set",
            lua.create_function(
                move |lua, (key, value, ttl): (mlua::LuaString, Value, Option<f64>)| {
                    let key = match storage_key(&execution.namespace(), &key) {
                        Ok(key) => key,
                        Err(message) => return error_value(lua, &message),
                    };
                    let value = match &value {
                        Value::String(s) => s.as_bytes().to_vec(),
                        Value::Integer(i) => i.to_string().into_bytes(),
                        Value::Number(n) => n.to_string().into_bytes(),
                        other => {
                            return error_value(
                                lua,
                                &format!(
                                    "kv.set: value must be a string, got {}",
                                    other.type_name()
                                ),
                            );
                        }
                    };
                    if value.len() > MAX_VALUE_BYTES {
                        return error_value(
                            lua,
                            &format!("kv.set: value over {MAX_VALUE_BYTES} bytes"),
                        );
                    }
                    let ttl = match ttl {
                        None => Some(default_ttl),
                        Some(0.0) => None,
                        Some(secs) if secs > 0.0 && secs.is_finite() => {
                            Some(Duration::from_secs_f64(secs))
                        }
                        Some(secs) => {
                            return error_value(
                                lua,
                                &format!("kv.set: ttl_secs must be positive, got {secs}"),
                            );
                        }
                    };
                    let timeout = call_timeout.min(execution.remaining());
                    match kv.set(&key, &value, ttl, timeout) {
                        Ok(()) => Ok(Value::Nil),
                        Err(error) => {
                            let message = format!("kv.set: {error}");
                            execution.record_transient_failure(&message);
                            error_value(lua, &message)
                        }
                    }
                },
            )?,
        )?;

        let (kv, execution) = (Arc::clone(&self.kv), Rc::clone(&context.execution));
        module.raw_set(
            "del",
            lua.create_function(move |lua, key: mlua::LuaString| {
                let key = match storage_key(&execution.namespace(), &key) {
                    Ok(key) => key,
                    Err(message) => return error_value(lua, &message),
                };
                let timeout = call_timeout.min(execution.remaining());
                match kv.del(&key, timeout) {
                    Ok(()) => Ok(Value::Nil),
                    Err(error) => {
                        let message = format!("kv.del: {error}");
                        execution.record_transient_failure(&message);
                        error_value(lua, &message)
                    }
                }
            })?,
        )?;
        Ok(module)
    }
}
