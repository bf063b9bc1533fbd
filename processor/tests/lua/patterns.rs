//! The sandbox's pattern functions (`find`, `match`, `gmatch`, `gsub`, reimplemented so they
//! stop at the deadline) against stock Lua 5.4's C library: generated subjects and patterns,
//! the same Lua code on both sides, results compared as text.

use mlua::Lua;
use proptest::prelude::*;

use crate::helpers::*;

/// Lua code that calls every pattern function on `s` and `p` and serialises what each returns,
/// or that it raised.
const PROBE: &str = r##"
local function ser(...)
  local out = {}
  for i = 1, select("#", ...) do
    local v = select(i, ...)
    out[#out + 1] = type(v) .. ":" .. tostring(v)
  end
  return table.concat(out, "|")
end
local function try(f, ...)
  local ok, a, b, c, d, e = pcall(f, ...)
  if not ok then return "error" end
  return ser(a, b, c, d, e)
end
local r = {}
r[#r + 1] = try(string.find, s, p)
r[#r + 1] = try(string.find, s, p, 2)
r[#r + 1] = try(string.find, s, p, -3)
r[#r + 1] = try(string.find, s, p, 1, true)
r[#r + 1] = try(string.match, s, p)
r[#r + 1] = try(string.match, s, p, 3)
r[#r + 1] = try(string.gsub, s, p, "<%0>")
r[#r + 1] = try(string.gsub, s, p, "[%1]")
r[#r + 1] = try(string.gsub, s, p, function(a, b) return b or a end)
r[#r + 1] = try(string.gsub, s, p, { a = "A", ab = false, [""] = "E" })
r[#r + 1] = try(string.gsub, s, p, "x", 2)
r[#r + 1] = try(function()
  local all = {}
  for a, b in string.gmatch(s, p) do all[#all + 1] = ser(a, b) end
  return table.concat(all, ";")
end)
r[#r + 1] = try(function()
  local all = {}
  for a in string.gmatch(s, p, 2) do all[#all + 1] = ser(a) end
  return table.concat(all, ";")
end)
return table.concat(r, "\n")
"##;

fn stock(s: &str, p: &str) -> String {
    let lua = Lua::new();
    lua.globals().set("s", s).unwrap();
    lua.globals().set("p", p).unwrap();
    lua.load(PROBE).eval::<String>().unwrap()
}

fn sandboxed(engine: &mut howk_processor::lua::LuaEngine, s: &str, p: &str) -> String {
    let code = format!(
        "local s, p = {s:?}, {p:?}\nrequest.body = (function() {PROBE} end)()",
        s = s,
        p = p
    );
    let request = run_on(engine, &code, &Webhook::default()).unwrap();
    String::from_utf8(request.body.unwrap()).unwrap()
}

fn subject() -> impl Strategy<Value = String> {
    proptest::string::string_regex("[ab(). %\\-\\[\\]^$0-9xyz\\n]{0,12}").unwrap()
}

/// Patterns built from the pieces Lua knows, valid or not.
fn pattern() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("a"),
        Just("b"),
        Just("."),
        Just("%a"),
        Just("%d"),
        Just("%s"),
        Just("%W"),
        Just("%%"),
        Just("%("),
        Just("[ab]"),
        Just("[^a]"),
        Just("[a-c]"),
        Just("[%d%]]"),
        Just("[]"),
        Just("*"),
        Just("+"),
        Just("-"),
        Just("?"),
        Just("("),
        Just(")"),
        Just("()"),
        Just("%1"),
        Just("%2"),
        Just("%b()"),
        Just("%f[%w]"),
        Just("%f[%W]"),
        Just("^"),
        Just("$"),
        Just("%"),
        Just("x"),
    ];
    proptest::collection::vec(piece, 0..7).prop_map(|pieces| pieces.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn pattern_functions_agree_with_stock_lua(s in subject(), p in pattern()) {
        let mut engine = engine();
        prop_assert_eq!(sandboxed(&mut engine, &s, &p), stock(&s, &p), "s = {:?}, p = {:?}", s, p);
    }
}

#[test]
fn pattern_functions_agree_on_known_cases() {
    let mut engine = engine();
    for (s, p) in [
        ("hello world from Lua", "(%w+) (%w+)"),
        ("key = value", "(%w+)%s*=%s*(%w+)"),
        ("  trim me  ", "^%s*(.-)%s*$"),
        ("THE (quick) fox", "%f[%a]%a+"),
        ("f(a(b)c)d", "%b()"),
        ("abc", ""),
        ("abc", "()"),
        ("aaa", "a-b"),
        ("hello", "(l)%1"),
        ("x = 10, y = 20", "(%a+) = (%d+)"),
        ("abc", "[%a-z]"),
        ("a.b", "%."),
        ("2024-01-02", "(%d+)-(%d+)-(%d+)"),
        ("", ".*"),
        ("abc", "^(a)(b)(c)$"),
        ("abc", "[]"),
        ("abc", "(()"),
        ("abc", "%"),
        ("abc", "%g+"),
    ] {
        assert_eq!(
            sandboxed(&mut engine, s, p),
            stock(s, p),
            "s = {s:?}, p = {p:?}"
        );
    }
}
