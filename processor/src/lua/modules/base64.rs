//! `base64`: `encode(s)` → string (standard alphabet, padded); `decode(s)` → bytes |
//! `(nil, err)`, accepting padded and unpadded input. Binary-safe both ways.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use mlua::{Lua, MultiValue, Table, Value};

use super::{LuaModule, ModuleContext};

pub struct Base64Module;

impl LuaModule for Base64Module {
    fn name(&self) -> &'static str {
        "base64"
    }

    fn build(&self, lua: &Lua, _context: &ModuleContext) -> mlua::Result<Table> {
        let module = lua.create_table()?;
        module.raw_set(
            "encode",
            lua.create_function(|lua, data: mlua::LuaString| {
                lua.create_string(STANDARD.encode(&*data.as_bytes()))
            })?,
        )?;
        module.raw_set(
            "decode",
            lua.create_function(|lua, data: mlua::LuaString| {
                let bytes = data.as_bytes();
                let trimmed = bytes.trim_ascii();
                let decoded = STANDARD
                    .decode(trimmed)
                    .or_else(|_| STANDARD_NO_PAD.decode(trimmed));
                Ok(match decoded {
                    Ok(bytes) => MultiValue::from_iter([Value::String(lua.create_string(bytes)?)]),
                    Err(error) => MultiValue::from_iter([
                        Value::Nil,
                        Value::String(lua.create_string(format!("invalid base64: {error}"))?),
                    ]),
                })
            })?,
        )?;
        Ok(module)
    }
}
