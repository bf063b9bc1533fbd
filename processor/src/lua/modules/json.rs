//! `json`: `decode(s)` → value | `(nil, err)`, `encode(v)` → string | `(nil, err)`, the
//! `json.null` sentinel, `json.array(t)` and `json.empty_array` (SPEC §4). The conversion itself
//! is `lua::convert`.

use mlua::{Lua, MultiValue, Table, Value};

use super::{LuaModule, ModuleContext};
use crate::lua::convert::{self, DecodeError};

pub struct JsonModule;

impl LuaModule for JsonModule {
    fn name(&self) -> &'static str {
        "json"
    }

    fn build(&self, lua: &Lua, context: &ModuleContext) -> mlua::Result<Table> {
        let json = lua.create_table()?;

        let markers = context.markers.clone();
        json.raw_set(
            "decode",
            lua.create_function(move |lua, text: Value| {
                let Value::String(text) = text else {
                    return fail(
                        lua,
                        format!("json.decode expects a string, got {}", text.type_name()),
                    );
                };
                match convert::decode(lua, &markers, &text.as_bytes()) {
                    Ok(value) => Ok(MultiValue::from_iter([value])),
                    Err(DecodeError::Json(message)) => fail(lua, message),
                    // The memory limit (or another VM failure) is not the script's data being
                    // wrong: let it propagate as the execution's error.
                    Err(DecodeError::Lua(error)) => Err(error),
                }
            })?,
        )?;

        let markers = context.markers.clone();
        json.raw_set(
            "encode",
            lua.create_function(move |lua, value: Value| {
                match convert::encode(&markers, &value) {
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
