//! The sandbox escape suite: one test per attack, named by the attack. Every finding against the
//! sandbox adds a test here that failed before its fix. The shared-state attacks run two
//! executions on the same engine (one VM): the first is the attacker, the second the victim or
//! the attacker's later self, which must see nothing of the first.

use std::time::{Duration, Instant};

use howk_processor::lua::{LuaEngine, ScriptErrorKind};

use crate::crypto::{decrypt_script, engine_with_crypto, keys, vectors};
use crate::helpers::*;

/// Every library and module a script can name.
const SHARED_TABLES: &[&str] = &[
    "string",
    "table",
    "math",
    "os",
    "coroutine",
    "utf8",
    "json",
    "base64",
    "log",
];

/// Writes a marker into every table reachable from `name` through the tricks that could hand
/// out a real table: pairs' state, next over the proxy, rawget, the string metatable.
fn tamper_with(name: &str) -> String {
    format!(
        r#"
        local lib = {name}
        local tables = {{ lib }}
        local f, s = pairs(lib)
        tables[#tables + 1] = s
        for k, v in pairs(lib) do
          if type(v) == "table" then tables[#tables + 1] = v end
        end
        local n1, v1 = next(lib)
        if type(v1) == "table" then tables[#tables + 1] = v1 end
        local g = rawget(lib, "__index")
        if type(g) == "table" then tables[#tables + 1] = g end
        local mt = getmetatable(lib)
        if type(mt) == "table" then tables[#tables + 1] = mt end
        for _, t in ipairs(tables) do
          pcall(rawset, t, "__probe", "leaked")
          pcall(function() t.__probe = "leaked" end)
          pcall(rawset, t, "upper", function() return "pwned" end)
        end
        "#
    )
}

fn probe(name: &str) -> String {
    format!(
        r#"
        local seen = {{}}
        seen[#seen + 1] = tostring(rawget({name}, "__probe"))
        seen[#seen + 1] = tostring({name}.__probe)
        for k in pairs({name}) do
          if k == "__probe" then seen[#seen + 1] = "iterated" end
        end
        seen[#seen + 1] = tostring(("").__probe)
        seen[#seen + 1] = string.upper("ok")
        request.body = table.concat(seen, ",")
        "#
    )
}

#[test]
fn pairs_state_hands_out_no_writable_library_or_module_table() {
    let mut engine = engine();
    let webhook = Webhook::default();
    for name in SHARED_TABLES {
        let _ = run_on(&mut engine, &tamper_with(name), &webhook);
        let seen = run_on(&mut engine, &probe(name), &webhook).unwrap();
        assert_eq!(
            String::from_utf8(seen.body.unwrap()).unwrap(),
            "nil,nil,nil,OK",
            "something written through {name} reached the next execution"
        );
    }
}

#[test]
fn pairs_state_is_the_proxy_itself() {
    for name in SHARED_TABLES {
        let code =
            format!("local _, s = pairs({name}) request.body = tostring(rawequal(s, {name}))");
        assert_eq!(body_of(&code), "true", "{name}");
    }
}

#[test]
fn hooking_string_upper_through_pairs_is_contained() {
    // The review's reproduction (C1).
    let mut engine = engine();
    let w = Webhook::default();
    let _ = run_on(
        &mut engine,
        "local _, s = pairs(string) s.upper = function() return 'pwned' end",
        &w,
    );
    let _ = run_on(
        &mut engine,
        "local _, c = pairs(crypto) if c then c.decrypt_credential = nil end",
        &w,
    );
    let r = run_on(
        &mut engine,
        "request.body = string.upper('ok') .. ('x'):upper()",
        &w,
    )
    .unwrap();
    assert_eq!(r.body.unwrap(), b"OKX");
}

#[test]
fn wrapping_crypto_decrypt_credential_cannot_steal_another_tenants_secret() {
    let vectors = vectors();
    let vector = &vectors["vectors"][0];
    let mut engine = engine_with_crypto(keys(&vectors));
    let attacker = Webhook {
        config_id: "attacker:1".into(),
        ..Webhook::default()
    };
    let victim = Webhook {
        config_id: "victim:1".into(),
        ..Webhook::default()
    };
    // The attacker installs a wrapper that records every decrypted value in a captured table.
    let _ = run_on(
        &mut engine,
        r#"
        local stolen = {}
        local _, c = pairs(crypto)
        local real = c.decrypt_credential
        local install = function(t)
          t.decrypt_credential = function(...)
            local plain, err = real(...)
            stolen[#stolen + 1] = plain
            return plain, err
          end
          t.stolen = stolen
        end
        pcall(install, c)
        pcall(install, crypto)
        "#,
        &attacker,
    );
    let decrypted = run_on(&mut engine, &decrypt_script(vector), &victim).unwrap();
    assert_eq!(
        decrypted.body.as_deref(),
        Some(vector["plaintext"].as_str().unwrap().as_bytes())
    );
    let loot = run_on(
        &mut engine,
        r#"
        local _, c = pairs(crypto)
        local stolen = rawget(c, "stolen") or crypto.stolen
        request.body = stolen and table.concat(stolen, ",") or "nothing"
        "#,
        &attacker,
    )
    .unwrap();
    assert_eq!(loot.body.unwrap(), b"nothing");
}

#[test]
fn the_string_metatable_index_is_not_the_real_library() {
    let mut engine = engine();
    let w = Webhook::default();
    // `("").upper` reads through __index; no chain of reads returns a writable table.
    let _ = run_on(
        &mut engine,
        r#"
        local ok = pcall(function() local _, s = pairs(("").upper and string) s.len = nil end)
        pcall(rawset, getmetatable("") or {}, "__index", {})
        "#,
        &w,
    );
    assert_eq!(
        run_on(&mut engine, "request.body = tostring(('abc'):len())", &w)
            .unwrap()
            .body
            .unwrap(),
        b"3"
    );
}

/// Runs `code` with a 100 ms budget and asserts it stops as a timeout near the budget, and that
/// the engine then runs the next script normally.
fn assert_stopped_near_budget(code: &str) {
    let timeout = Duration::from_millis(100);
    let mut engine = limited_engine(timeout, 64);
    let start = Instant::now();
    let error = run_on(&mut engine, code, &Webhook::default()).expect_err(code);
    let elapsed = start.elapsed();
    assert_eq!(error.kind, ScriptErrorKind::Timeout, "{code}: {error}");
    assert!(
        elapsed < timeout + Duration::from_millis(60),
        "{code}: stopped after {elapsed:?}"
    );
    next_execution_works(&mut engine);
}

fn next_execution_works(engine: &mut LuaEngine) {
    let request = run_on(engine, "request.body = ('ok'):upper()", &Webhook::default()).unwrap();
    assert_eq!(request.body.unwrap(), b"OK");
}

#[test]
fn table_move_over_a_huge_empty_range_stops_at_the_deadline() {
    assert_stopped_near_budget("table.move({}, 1, 1 << 62, 2)");
    assert_stopped_near_budget("table.move({}, 1, math.maxinteger - 1, 2, {})");
    // Overlapping, destination above the source: the backward path.
    assert_stopped_near_budget("local t = {} table.move(t, 1, 1 << 40, 3, t)");
    assert_stopped_near_budget("table.move({}, '1', '4611686018427387904', '2')");
}

#[test]
fn table_concat_over_a_huge_range_of_empty_c_values_stops_at_the_deadline() {
    // __index = table.concat answers "" for every key from C: no allocation, no Lua code.
    assert_stopped_near_budget(
        "local t = setmetatable({}, {__index = table.concat}) table.concat(t, '', 1, 1 << 62)",
    );
}

#[test]
fn table_insert_and_remove_under_a_huge_len_stop_at_the_deadline() {
    assert_stopped_near_budget(
        "local t = setmetatable({}, {__len = function() return 1 << 62 end}) table.insert(t, 1, 'x')",
    );
    assert_stopped_near_budget(
        "local t = setmetatable({}, {__len = function() return 1 << 62 end}) table.remove(t, 1)",
    );
}

#[test]
fn table_sort_over_a_huge_len_is_refused() {
    let error =
        run("local t = setmetatable({}, {__len = function() return 1 << 40 end}) table.sort(t)")
            .unwrap_err();
    assert_eq!(error.kind, ScriptErrorKind::Runtime);
    assert!(error.message.contains("table.sort: at most"), "{error}");
}

#[test]
fn backtracking_pattern_bombs_stop_at_the_deadline() {
    for code in [
        "local s = string.rep('a', 300) string.find(s, '.-.-.-.-b')",
        "local s = string.rep('a', 300) string.match(s, '.*.*.*.*b')",
        "local s = string.rep('a', 300) for m in string.gmatch(s, 'a-a-a-a-b') do end",
        "local s = string.rep('a', 300) string.gsub(s, '(.-)(.-)(.-)b', '%1')",
        "local s = string.rep('a', 300) s:find('.-.-.-.-b')",
        "local s = string.rep('a', 1 << 20) s:find('a*b')",
        "local s = string.rep('(', 1 << 20) s:find('%b()%b()x')",
    ] {
        assert_stopped_near_budget(code);
    }
}

#[test]
fn a_plain_find_of_a_long_needle_is_linear() {
    // The C library's plain find is O(n·m): a 1 MiB haystack of 'a' and a 64 KiB needle of 'a'
    // ending in 'b' would take minutes there.
    let start = Instant::now();
    let body = body_of(
        "local hay = string.rep('a', 1 << 20) local needle = string.rep('a', 1 << 16) .. 'b' \
         request.body = tostring(string.find(hay, needle, 1, true)) .. tostring(hay:find(needle))",
    );
    assert_eq!(body, "nilnil");
    assert!(start.elapsed() < Duration::from_millis(400));
}

#[test]
fn string_rep_beyond_the_memory_limit_is_a_memory_error() {
    let mut engine = limited_engine(Duration::from_millis(500), 16);
    for code in [
        "string.rep('x', 1 << 30)",
        "string.rep('x', 1 << 20, string.rep('y', 64))",
    ] {
        let error = run_on(&mut engine, code, &Webhook::default()).unwrap_err();
        assert_eq!(error.kind, ScriptErrorKind::MemoryLimit, "{code}: {error}");
    }
    next_execution_works(&mut engine);
}

#[test]
fn string_rep_of_nothing_a_huge_number_of_times_returns_at_once() {
    // Stock string.rep copies an empty string (and an empty separator) n times in a C loop that
    // allocates nothing: rep('', 1 << 62) would spin out of the hook's and the memory limit's
    // reach. The engine runs on its own thread so that a hang fails the test instead of the run.
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut engine = limited_engine(Duration::from_millis(100), 16);
        let body = run_on(
            &mut engine,
            "request.body = '[' .. string.rep('', 1 << 62) .. ('').rep('', math.maxinteger, '') \
             .. string.rep('', 3, '') .. string.rep('ab', 2, '') .. string.rep('', 3, '-') .. ']'",
            &Webhook::default(),
        )
        .map(|request| request.body.unwrap());
        let _ = sender.send(body);
    });
    let body = receiver
        .recv_timeout(Duration::from_secs(5))
        .expect("string.rep of empty strings did not return");
    assert_eq!(body.unwrap(), b"[abab--]");
    // The argument checks are string.rep's own.
    let error = run("string.rep('', 'x')").unwrap_err();
    assert!(error.message.contains("bad argument #2"), "{error}");
}

#[test]
fn chunked_table_functions_keep_their_results() {
    // Large ranges take the chunked path; results must equal what the C functions give.
    assert_eq!(
        body_of(
            "local t = {} for i = 1, 10000 do t[i] = i end \
             table.move(t, 1, 10000, 3) \
             local u = {} for i = 1, 10000 do u[i] = i end \
             table.move(u, 3, 10000, 1) \
             local d = table.move(t, 1, 10000, 1, {}) \
             request.body = t[1] .. ',' .. t[3] .. ',' .. t[10002] .. ',' .. u[1] .. ',' .. \
             u[9998] .. ',' .. u[10000] .. ',' .. #d"
        ),
        "1,1,10000,3,10000,10000,10000"
    );
    assert_eq!(
        body_of(
            "local t = {} for i = 1, 9000 do t[i] = i % 10 end \
             local s = table.concat(t, '-') \
             local r = table.concat(t, '', 4000, 8100) \
             request.body = #s .. ',' .. s:sub(1, 7) .. ',' .. #r .. ',' .. r:sub(1, 3)"
        ),
        "17999,1-2-3-4,4101,012"
    );
    assert_eq!(
        body_of(
            "local t = {} for i = 1, 9000 do t[i] = i end \
             table.insert(t, 1, 0) table.insert(t, 'end') local r = table.remove(t, 2) \
             local last = table.remove(t) \
             request.body = #t .. ',' .. t[1] .. ',' .. t[2] .. ',' .. r .. ',' .. last"
        ),
        "9000,0,2,1,end"
    );
}
