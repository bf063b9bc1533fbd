//! JSON ↔ Lua, directly: serde_json's parser drives a visitor that builds Lua values, and a
//! `Serialize` walk over Lua values feeds serde_json's writer. No `serde_json::Value` tree in
//! between — the JSON bridge is the largest cost of a typical transform, and skipping the middle
//! tree halves it (see `benches/lua_engine.rs`).
//!
//! Rules (SPEC §4): integers stay exact, 64-bit ids beyond 2^53 included (integers beyond the
//! signed 64-bit range become floats); `null` is the `json.null` sentinel; decoded arrays carry
//! the array marker metatable, so `[]` re-encodes as `[]`; an unmarked empty table encodes as
//! `{}`; a table whose keys are exactly `1..n` encodes as an array.

use std::cell::RefCell;
use std::fmt;

use mlua::{LightUserData, Lua, Table, Value};
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{self, Serialize, SerializeMap, SerializeSeq, Serializer};

/// Deepest nesting encoded; deeper (or cyclic) tables are an error, not a stack overflow.
/// serde_json's parser applies the same bound (128) to decoding.
const MAX_DEPTH: usize = 128;

/// The `json.null` sentinel: a light userdata holding a null pointer, equal only to itself.
pub fn null() -> Value {
    Value::LightUserData(LightUserData(std::ptr::null_mut()))
}

fn is_null(value: &Value) -> bool {
    matches!(value, Value::LightUserData(ud) if ud.0.is_null())
}

/// The metatables that mark a table as a JSON array: the shared marker set by `json.decode` and
/// `json.array`, and the one of the read-only `json.empty_array`.
#[derive(Clone)]
pub struct ArrayMarkers {
    pub array: Table,
    pub empty_array: Table,
}

impl ArrayMarkers {
    fn is_array(&self, table: &Table) -> bool {
        table.metatable().is_some_and(|mt| {
            mt.to_pointer() == self.array.to_pointer()
                || mt.to_pointer() == self.empty_array.to_pointer()
        })
    }
}

/// Decodes JSON bytes into a Lua value.
///
/// A Lua error raised while building (the memory limit, above all) is returned as that error, so
/// the caller can let it propagate instead of reporting it as bad JSON.
pub fn decode(lua: &Lua, markers: &ArrayMarkers, json: &[u8]) -> Result<Value, DecodeError> {
    let lua_error = RefCell::new(None);
    let seed = LuaSeed {
        lua,
        markers,
        lua_error: &lua_error,
    };
    let mut deserializer = serde_json::Deserializer::from_slice(json);
    let result = seed
        .deserialize(&mut deserializer)
        .and_then(|value| deserializer.end().map(|()| value));
    match (result, lua_error.into_inner()) {
        (_, Some(error)) => Err(DecodeError::Lua(error)),
        (Ok(value), None) => Ok(value),
        (Err(error), None) => Err(DecodeError::Json(error.to_string())),
    }
}

#[derive(Debug)]
pub enum DecodeError {
    /// The text is not JSON; the message names line and column.
    Json(String),
    /// Lua could not build the value (memory limit).
    Lua(mlua::Error),
}

#[derive(Clone, Copy)]
struct LuaSeed<'a> {
    lua: &'a Lua,
    markers: &'a ArrayMarkers,
    lua_error: &'a RefCell<Option<mlua::Error>>,
}

impl LuaSeed<'_> {
    fn lua<T, E: de::Error>(&self, result: mlua::Result<T>) -> Result<T, E> {
        result.map_err(|error| {
            let message = error.to_string();
            self.lua_error.borrow_mut().get_or_insert(error);
            E::custom(message)
        })
    }
}

impl<'de> DeserializeSeed<'de> for LuaSeed<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for LuaSeed<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Boolean(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Integer(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(match i64::try_from(v) {
            Ok(v) => Value::Integer(v),
            Err(_) => Value::Number(v as f64),
        })
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Number(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        self.lua(self.lua.create_string(v)).map(Value::String)
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(null())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let table = self.lua(
            self.lua
                .create_table_with_capacity(seq.size_hint().unwrap_or(4), 0),
        )?;
        self.lua(table.set_metatable(Some(self.markers.array.clone())))?;
        let mut index = 1;
        while let Some(value) = seq.next_element_seed(self)? {
            self.lua(table.raw_seti(index, value))?;
            index += 1;
        }
        Ok(Value::Table(table))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let table = self.lua(self.lua.create_table_with_capacity(0, 8))?;
        while let Some(key) = map.next_key_seed(KeySeed(self))? {
            let value = map.next_value_seed(self)?;
            self.lua(table.raw_set(key, value))?;
        }
        Ok(Value::Table(table))
    }
}

/// Object keys become Lua strings without an intermediate `String` when they have no escapes.
struct KeySeed<'a>(LuaSeed<'a>);

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = mlua::LuaString;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = mlua::LuaString;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        self.0.lua(self.0.lua.create_string(v))
    }
}

/// Encodes a Lua value as JSON bytes, or says why it cannot be encoded.
pub fn encode(markers: &ArrayMarkers, value: &Value) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(256);
    let mut serializer = serde_json::Serializer::new(&mut out);
    LuaJson {
        value,
        markers,
        depth: 0,
    }
    .serialize(&mut serializer)
    .map_err(|error| error.to_string())?;
    Ok(out)
}

struct LuaJson<'a> {
    value: &'a Value,
    markers: &'a ArrayMarkers,
    depth: usize,
}

impl LuaJson<'_> {
    fn child<'b>(&'b self, value: &'b Value) -> LuaJson<'b> {
        LuaJson {
            value,
            markers: self.markers,
            depth: self.depth + 1,
        }
    }
}

impl Serialize for LuaJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.depth > MAX_DEPTH {
            return Err(ser::Error::custom(format!(
                "cannot encode tables nested deeper than {MAX_DEPTH} (or cyclic)"
            )));
        }
        match self.value {
            Value::Nil => serializer.serialize_unit(),
            value if is_null(value) => serializer.serialize_unit(),
            Value::Boolean(b) => serializer.serialize_bool(*b),
            Value::Integer(i) => serializer.serialize_i64(*i),
            Value::Number(n) if n.is_finite() => serializer.serialize_f64(*n),
            Value::Number(n) => Err(ser::Error::custom(format!("cannot encode {n} as JSON"))),
            Value::String(s) => match std::str::from_utf8(&s.as_bytes()) {
                Ok(text) => serializer.serialize_str(text),
                Err(_) => Err(ser::Error::custom(
                    "cannot encode a string that is not valid UTF-8 (base64-encode binary data)",
                )),
            },
            Value::Table(table) => self.serialize_table(table, serializer),
            other => Err(ser::Error::custom(format!(
                "cannot encode a {} as JSON",
                other.type_name()
            ))),
        }
    }
}

impl LuaJson<'_> {
    fn serialize_table<S: Serializer>(
        &self,
        table: &Table,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        let len = table.raw_len();
        let marked = self.markers.is_array(table);
        // A sequence 1..n with nothing else is an array; count keys only when that can be true.
        let is_array = marked || (len > 0 && count_keys(table) == len);
        if is_array {
            let mut seq = serializer.serialize_seq(Some(len))?;
            for index in 1..=len {
                let item: Value = table.raw_get(index).map_err(ser::Error::custom)?;
                seq.serialize_element(&self.child(&item))?;
            }
            return seq.end();
        }
        let mut map = serializer.serialize_map(None)?;
        let mut failure = None;
        let iterated = table.for_each(|key: Value, value: Value| {
            let result = match &key {
                Value::String(s) => match std::str::from_utf8(&s.as_bytes()) {
                    Ok(text) => map.serialize_entry(text, &self.child(&value)),
                    Err(_) => Err(ser::Error::custom("object key is not valid UTF-8")),
                },
                Value::Integer(i) => map.serialize_entry(&i.to_string(), &self.child(&value)),
                Value::Number(n) => map.serialize_entry(&n.to_string(), &self.child(&value)),
                other => Err(ser::Error::custom(format!(
                    "cannot encode a table with {} keys as JSON",
                    other.type_name()
                ))),
            };
            result.map_err(|error| {
                failure = Some(error);
                mlua::Error::runtime("stop")
            })
        });
        if let Some(error) = failure {
            return Err(error);
        }
        iterated.map_err(ser::Error::custom)?;
        map.end()
    }
}

fn count_keys(table: &Table) -> usize {
    let mut count = 0;
    let _ = table.for_each(|_: Value, _: Value| {
        count += 1;
        Ok(())
    });
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
