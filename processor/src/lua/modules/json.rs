//! `json`: `decode(s)` → value | `(nil, err)`, `encode(v)` → string | `(nil, err)`, the
//! `json.null` sentinel, `json.array(t)` and `json.empty_array` (SPEC §4). The conversion itself
//! is `lua::convert`.

use std::rc::Rc;

use mlua::{Lua, MultiValue, Table, Value};

use super::{LuaModule, ModuleContext};
use crate::lua::convert::{self, LUA_BYTES_PER_JSON_BYTE};

pub struct JsonModule;

impl LuaModule for JsonModule {
    fn name(&self) -> &'static str {
        "json"
    }

    fn build(&self, lua: &Lua, context: &ModuleContext) -> mlua::Result<Table> {
        let json = lua.create_table()?;

        let markers = context.markers.clone();
        let execution = Rc::clone(&context.execution);
        json.raw_set(
            "decode",
            lua.create_function(move |lua, text: Value| {
                let Value::String(text) = text else {
                    return fail(
                        lua,
                        format!("json.decode expects a string, got {}", text.type_name()),
                    );
                };
                let estimate = text
                    .as_bytes()
                    .len()
                    .saturating_mul(LUA_BYTES_PER_JSON_BYTE);
                if !execution.can_lift_memory_limit(lua, estimate) {
                    // What the text could become does not fit in what the execution has left.
                    return Err(mlua::Error::MemoryError("not enough memory".into()));
                }
                match execution.bulk(lua, estimate, || convert::decode(lua, &markers, &text))? {
                    Ok(value) => Ok(MultiValue::from_iter([value])),
                    Err(message) => fail(lua, message),
                }
            })?,
        )?;

        let markers = context.markers.clone();
        let execution = Rc::clone(&context.execution);
        json.raw_set(
            "encode",
            lua.create_function(move |lua, value: Value| {
                let max_len = execution.memory_left(lua);
                match convert::encode(lua, &markers, &value, max_len)? {
                    Ok(bytes) => Ok(MultiValue::from_iter([Value::String(
                        lua.create_string(bytes)?,
                    )])),
                    Err(message) => fail(lua, message),
                }
            })?,
        )?;

        let array_mt = context.markers.array.clone();
        json.raw_set(
            "array",
            lua.create_function(move |lua, table: Option<Table>| {
                let table = match table {
                    Some(table) => table,
                    None => lua.create_table()?,
                };
                table.set_metatable(Some(array_mt.clone()))?;
                Ok(table)
            })?,
        )?;

        json.raw_set("null", convert::null())?;
        let empty_array = lua.create_table()?;
        empty_array.set_metatable(Some(context.markers.empty_array.clone()))?;
        json.raw_set("empty_array", empty_array)?;
        Ok(json)
    }
}

/// The `(nil, err)` convention of SPEC §4.
fn fail(lua: &Lua, message: String) -> mlua::Result<MultiValue> {
    Ok(MultiValue::from_iter([
        Value::Nil,
        Value::String(lua.create_string(message)?),
    ]))
}
