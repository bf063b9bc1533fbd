//! JSON ↔ Lua, directly on the Lua stack: serde_json's parser drives a visitor that pushes Lua
//! values through the C API, and a `Serialize` walk over stack values feeds serde_json's writer.
//! No `serde_json::Value` tree in between, and no mlua handle per value: the JSON bridge is the
//! largest cost of a typical transform, and per-value handles cost more than the parsing itself
//! (see `benches/lua_engine.rs`).
//!
//! Safety: both run inside `Lua::exec_raw` (a protected call) and make only C API calls that
//! cannot raise a Lua error under the conditions their callers guarantee — decode runs with the
//! memory limit lifted (`ExecutionContext::bulk` only lifts it when the allowance covers
//! [`LUA_BYTES_PER_JSON_BYTE`] × input), encode only reads. So no Lua error ever longjmps across
//! these Rust frames.
//!
//! Rules (SPEC §4): integers stay exact, 64-bit ids beyond 2^53 included (integers beyond the
//! signed 64-bit range become floats); `null` is the `json.null` sentinel; decoded arrays carry
//! the array marker metatable, so `[]` re-encodes as `[]`; an unmarked empty table encodes as
//! `{}`; a table whose keys are exactly `1..n` encodes as an array.

use std::ffi::{c_char, c_int};
use std::fmt;
use std::io::Write;

use mlua::ffi::{self, lua_State};
use mlua::{LightUserData, Lua, LuaString, MultiValue, Table, Value};
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{self, Serialize, SerializeMap, SerializeSeq, Serializer};

/// Deepest nesting encoded; deeper (or cyclic) tables are an error, not a stack overflow.
/// serde_json's parser applies the same bound (128) to decoding.
const MAX_DEPTH: usize = 128;

/// Upper bound of the Lua heap one byte of JSON text can become. The worst text is empty
/// containers, `[],` — 3 bytes for a 56-byte table plus allocator overhead (~24×); strings and
/// numbers cost less (a 2-byte `1,` is one 16-byte array slot, doubled at worst by growth).
pub const LUA_BYTES_PER_JSON_BYTE: usize = 32;

/// The `json.null` sentinel: a light userdata holding a null pointer, equal only to itself.
pub fn null() -> Value {
    Value::LightUserData(LightUserData(std::ptr::null_mut()))
}

/// The metatables that mark a table as a JSON array: the shared marker set by `json.decode` and
/// `json.array`, and the one of the read-only `json.empty_array`.
#[derive(Clone)]
pub struct ArrayMarkers {
    pub array: Table,
    pub empty_array: Table,
}

/// Decodes JSON text into a Lua value: `Ok(value)`, or `Err(message)` naming line and column.
///
/// The caller must have lifted the memory limit (see the module's safety note).
pub fn decode(
    lua: &Lua,
    markers: &ArrayMarkers,
    json: &LuaString,
) -> mlua::Result<Result<Value, String>> {
    // Stack inside: 1 = the JSON string (read in place, no copy), 2 = the array metatable.
    let results: MultiValue = unsafe {
        lua.exec_raw((json, &markers.array), |state| {
            let mut len = 0;
            let ptr = ffi::lua_tolstring(state, 1, &mut len);
            let text = std::slice::from_raw_parts(ptr.cast::<u8>(), len);
            let base = ffi::lua_gettop(state);
            let mut deserializer = serde_json::Deserializer::from_slice(text);
            let result = PushSeed { state, array_mt: 2 }
                .deserialize(&mut deserializer)
                .and_then(|()| deserializer.end());
            if let Err(error) = result {
                ffi::lua_settop(state, base);
                ffi::lua_pushnil(state);
                push_str(state, &error.to_string());
            }
            // Leave only the result(s) above the arguments.
            ffi::lua_rotate(state, 1, -2);
            ffi::lua_settop(state, ffi::lua_gettop(state) - 2);
        })?
    };
    let mut results = results.into_iter();
    match (results.next(), results.next()) {
        (Some(Value::Nil), Some(Value::String(message))) => Ok(Err(message.to_string_lossy())),
        (Some(value), None) => Ok(Ok(value)),
        _ => Err(mlua::Error::runtime("json.decode: unexpected results")),
    }
}

unsafe fn push_str(state: *mut lua_State, text: &str) {
    unsafe { ffi::lua_pushlstring(state, text.as_ptr().cast::<c_char>(), text.len()) };
}

/// Pushes exactly one value per `deserialize` on the stack.
#[derive(Clone, Copy)]
struct PushSeed {
    state: *mut lua_State,
    /// Absolute stack index of the array marker metatable.
    array_mt: c_int,
}

impl PushSeed {
    /// Room for one more nesting level (a container, a key and a value).
    fn reserve<E: de::Error>(self) -> Result<(), E> {
        if unsafe { ffi::lua_checkstack(self.state, 4) } == 0 {
            return Err(E::custom("JSON nested too deeply for the Lua stack"));
        }
        Ok(())
    }
}

impl<'de> DeserializeSeed<'de> for PushSeed {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for PushSeed {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<(), E> {
        unsafe { ffi::lua_pushboolean(self.state, c_int::from(v)) };
        Ok(())
    }

    fn visit_i64<E>(self, v: i64) -> Result<(), E> {
        unsafe { ffi::lua_pushinteger(self.state, v) };
        Ok(())
    }

    fn visit_u64<E>(self, v: u64) -> Result<(), E> {
        match i64::try_from(v) {
            Ok(v) => unsafe { ffi::lua_pushinteger(self.state, v) },
            Err(_) => unsafe { ffi::lua_pushnumber(self.state, v as f64) },
        }
        Ok(())
    }

    fn visit_f64<E>(self, v: f64) -> Result<(), E> {
        unsafe { ffi::lua_pushnumber(self.state, v) };
        Ok(())
    }

    fn visit_str<E>(self, v: &str) -> Result<(), E> {
        unsafe { push_str(self.state, v) };
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        unsafe { ffi::lua_pushlightuserdata(self.state, std::ptr::null_mut()) };
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.reserve()?;
        // serde_json gives no size hint; most JSON arrays and objects hold a handful of items,
        // and starting at 4 saves the 1 → 2 → 4 resizes.
        let capacity = seq.size_hint().unwrap_or(4).min(1 << 16) as c_int;
        unsafe {
            ffi::lua_createtable(self.state, capacity, 0);
            ffi::lua_pushvalue(self.state, self.array_mt);
            ffi::lua_setmetatable(self.state, -2);
        }
        let mut index = 1;
        while let Some(()) = seq.next_element_seed(self)? {
            unsafe { ffi::lua_rawseti(self.state, -2, index) };
            index += 1;
        }
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.reserve()?;
        unsafe { ffi::lua_createtable(self.state, 0, 4) };
        while let Some(()) = map.next_key_seed(KeySeed(self))? {
            map.next_value_seed(self)?;
            unsafe { ffi::lua_rawset(self.state, -3) };
        }
        Ok(())
    }
}

/// Object keys are pushed straight from the parser's buffer when they have no escapes.
struct KeySeed(PushSeed);

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E>(self, v: &str) -> Result<(), E> {
        unsafe { push_str(self.0.state, v) };
        Ok(())
    }
}

/// Encodes a Lua value as JSON: `Ok(text)`, or `Err(message)` saying why it cannot be encoded.
/// The text may not exceed `max_len` bytes: a table can reference one large string many times,
/// so the text can dwarf the Lua memory it comes from.
pub fn encode(
    lua: &Lua,
    markers: &ArrayMarkers,
    value: &Value,
    max_len: usize,
) -> mlua::Result<Result<Vec<u8>, String>> {
    let mut out = Ok(Vec::new());
    unsafe {
        lua.exec_raw::<()>((value, &markers.array, &markers.empty_array), |state| {
            let mut writer = CappedWriter {
                bytes: Vec::with_capacity(256),
                max_len,
            };
            let mut serializer = serde_json::Serializer::new(&mut writer);
            let walk = StackJson {
                state,
                index: 1,
                depth: 0,
            };
            out = match walk.serialize(&mut serializer) {
                Ok(()) => Ok(writer.bytes),
                Err(error) => Err(error.to_string()),
            };
            ffi::lua_settop(state, 0);
        })?;
    }
    Ok(out)
}

/// A `Vec` that refuses to grow past `max_len`.
struct CappedWriter {
    bytes: Vec<u8>,
    max_len: usize,
}

impl Write for CappedWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len() + buf.len() > self.max_len {
            return Err(std::io::Error::other(format!(
                "encoded JSON would exceed the {} bytes left in the memory limit",
                self.max_len
            )));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Stack slots of `encode`'s arguments: the array marker metatables.
const ARRAY_MT: c_int = 2;
const EMPTY_ARRAY_MT: c_int = 3;

/// A Lua value at an absolute stack `index`, serialized by reading it in place.
struct StackJson {
    state: *mut lua_State,
    index: c_int,
    depth: usize,
}

impl Serialize for StackJson {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let (state, index) = (self.state, self.index);
        if self.depth > MAX_DEPTH {
            return Err(ser::Error::custom(format!(
                "cannot encode tables nested deeper than {MAX_DEPTH} (or cyclic)"
            )));
        }
        unsafe {
            match ffi::lua_type(state, index) {
                ffi::LUA_TNIL => serializer.serialize_unit(),
                ffi::LUA_TLIGHTUSERDATA if ffi::lua_touserdata(state, index).is_null() => {
                    serializer.serialize_unit()
                }
                ffi::LUA_TBOOLEAN => {
                    serializer.serialize_bool(ffi::lua_toboolean(state, index) != 0)
                }
                ffi::LUA_TNUMBER if ffi::lua_isinteger(state, index) != 0 => serializer
                    .serialize_i64(ffi::lua_tointegerx(state, index, std::ptr::null_mut())),
                ffi::LUA_TNUMBER => {
                    let n = ffi::lua_tonumberx(state, index, std::ptr::null_mut());
                    if n.is_finite() {
                        serializer.serialize_f64(n)
                    } else {
                        Err(ser::Error::custom(format!("cannot encode {n} as JSON")))
                    }
                }
                ffi::LUA_TSTRING => match std::str::from_utf8(string_at(state, index)) {
                    Ok(text) => serializer.serialize_str(text),
                    Err(_) => Err(ser::Error::custom(
                        "cannot encode a string that is not valid UTF-8 (base64-encode binary data)",
                    )),
                },
                ffi::LUA_TTABLE => self.serialize_table(serializer),
                other => Err(ser::Error::custom(format!(
                    "cannot encode a {} as JSON",
                    std::ffi::CStr::from_ptr(ffi::lua_typename(state, other)).to_string_lossy()
                ))),
            }
        }
    }
}

/// The bytes of the string at `index`; only call on a string (it would convert a number).
unsafe fn string_at<'a>(state: *mut lua_State, index: c_int) -> &'a [u8] {
    let mut len = 0;
    unsafe {
        let ptr = ffi::lua_tolstring(state, index, &mut len);
        std::slice::from_raw_parts(ptr.cast::<u8>(), len)
    }
}

impl StackJson {
    fn child(&self, index: c_int) -> StackJson {
        StackJson {
            state: self.state,
            index,
            depth: self.depth + 1,
        }
    }

    fn serialize_table<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let (state, index) = (self.state, self.index);
        unsafe {
            if ffi::lua_checkstack(state, 4) == 0 {
                return Err(ser::Error::custom(
                    "tables nested too deeply for the Lua stack",
                ));
            }
            let len = ffi::lua_rawlen(state, index);
            let marked = if ffi::lua_getmetatable(state, index) != 0 {
                let marked = ffi::lua_rawequal(state, -1, ARRAY_MT) != 0
                    || ffi::lua_rawequal(state, -1, EMPTY_ARRAY_MT) != 0;
                ffi::lua_pop(state, 1);
                marked
            } else {
                false
            };
            // A sequence 1..n with nothing else is an array; count keys only when that can be.
            if marked || (len > 0 && count_keys(state, index) == len) {
                let mut seq = serializer.serialize_seq(Some(len))?;
                for i in 1..=len {
                    ffi::lua_rawgeti(state, index, i as ffi::lua_Integer);
                    let item = self.child(ffi::lua_gettop(state));
                    let result = seq.serialize_element(&item);
                    ffi::lua_pop(state, 1);
                    result?;
                }
                return seq.end();
            }
            let mut map = serializer.serialize_map(None)?;
            ffi::lua_pushnil(state);
            while ffi::lua_next(state, index) != 0 {
                let top = ffi::lua_gettop(state);
                let value = self.child(top);
                let result = match ffi::lua_type(state, top - 1) {
                    ffi::LUA_TSTRING => match std::str::from_utf8(string_at(state, top - 1)) {
                        Ok(key) => map.serialize_entry(key, &value),
                        Err(_) => Err(ser::Error::custom("object key is not valid UTF-8")),
                    },
                    ffi::LUA_TNUMBER if ffi::lua_isinteger(state, top - 1) != 0 => {
                        let key = ffi::lua_tointegerx(state, top - 1, std::ptr::null_mut());
                        map.serialize_entry(&key.to_string(), &value)
                    }
                    ffi::LUA_TNUMBER => {
                        let key = ffi::lua_tonumberx(state, top - 1, std::ptr::null_mut());
                        map.serialize_entry(&key.to_string(), &value)
                    }
                    other => Err(ser::Error::custom(format!(
                        "cannot encode a table with {} keys as JSON",
                        std::ffi::CStr::from_ptr(ffi::lua_typename(state, other)).to_string_lossy()
                    ))),
                };
                ffi::lua_pop(state, 1);
                if let Err(error) = result {
                    ffi::lua_pop(state, 1);
                    return Err(error);
                }
            }
            map.end()
        }
    }
}

unsafe fn count_keys(state: *mut lua_State, index: c_int) -> usize {
    let mut count = 0;
    unsafe {
        ffi::lua_pushnil(state);
        while ffi::lua_next(state, index) != 0 {
            ffi::lua_pop(state, 1);
            count += 1;
        }
    }
    count
}

/// Converts a `serde_json::Value` (a script's `script_config`) into Lua, resolving `${VAR}`
/// templates in every string on the way.
pub fn from_json_value(
    lua: &Lua,
    markers: &ArrayMarkers,
    value: &serde_json::Value,
    resolve: &dyn Fn(&str) -> Option<String>,
) -> mlua::Result<Value> {
    use serde_json::Value as J;
    Ok(match value {
        J::Null => null(),
        J::Bool(b) => Value::Boolean(*b),
        J::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => Value::Integer(i),
            (None, Some(f)) => Value::Number(f),
            (None, None) => Value::Nil,
        },
        J::String(s) => match resolve(s) {
            Some(resolved) => Value::String(lua.create_string(resolved)?),
            None => Value::String(lua.create_string(s)?),
        },
        J::Array(items) => {
            let table = lua.create_table_with_capacity(items.len(), 0)?;
            table.set_metatable(Some(markers.array.clone()))?;
            for (i, item) in items.iter().enumerate() {
                table.raw_seti(i + 1, from_json_value(lua, markers, item, resolve)?)?;
            }
            Value::Table(table)
        }
        J::Object(map) => {
            let table = lua.create_table_with_capacity(0, map.len())?;
            for (key, item) in map {
                table.raw_set(key.as_str(), from_json_value(lua, markers, item, resolve)?)?;
            }
            Value::Table(table)
        }
    })
}
