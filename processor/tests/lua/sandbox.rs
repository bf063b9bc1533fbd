//! Escape attempts, table-driven: each forbidden global, library function and trick must be
//! contained — either absent or failing — and never affect the next execution.

use howk_processor::lua::ScriptErrorKind;

use crate::helpers::*;

/// Globals and library functions that must not exist in a script's environment.
const ABSENT: &[&str] = &[
    "io",
    "debug",
    "package",
    "load",
    "loadstring",
    "loadfile",
    "dofile",
    "string.dump",
    "os.execute",
    "os.exit",
    "os.getenv",
    "os.remove",
    "os.rename",
    "os.tmpname",
    "os.setlocale",
    "module",
    "newproxy",
    "setfenv",
    "getfenv",
    "collectgarbage_raw",
    "jit",
    "ffi",
];

#[test]
fn forbidden_globals_and_functions_are_absent() {
    for name in ABSENT {
        let code = format!("request.body = type({name})");
        // `a.b` on an absent `a` is an error; an absent global is nil: both are contained.
        match run(&code) {
            Ok(request) => assert_eq!(request.body.unwrap(), b"nil", "{name} is reachable"),
            Err(error) => assert_eq!(error.kind, ScriptErrorKind::Runtime, "{name}: {error}"),
        }
    }
}

#[test]
fn allowed_os_functions_exist() {
    assert_eq!(
        body_of("request.body = type(os.time) .. type(os.date) .. type(os.clock)"),
        "functionfunctionfunction"
    );
}

/// Each attempt must fail with a runtime error (the sandbox refusing it).
const REFUSED: &[(&str, &str)] = &[
    ("string.upper = function() return 'pwned' end", "read-only"),
    ("table.insert = nil", "read-only"),
    ("math.floor = print", "read-only"),
    ("json.encode = nil", "read-only"),
    ("os.time = nil", "read-only"),
    ("rawset(string, 'upper', print)", "read-only"),
    ("setmetatable(string, {})", "protected metatable"),
    ("getmetatable('').__index.upper = nil", "index a boolean"),
    ("getmetatable('').__index = {}", "index a boolean"),
    ("setmetatable(_G, {})", "protected metatable"),
    ("getmetatable(_G).__index.string = {}", "index a boolean"),
    ("setmetatable({}, {__gc = function() end})", "__gc"),
    ("collectgarbage('stop')", "not allowed"),
    ("collectgarbage('generational')", "not allowed"),
    ("require('io')", "not found"),
    ("require('os')", "not found"),
    ("require('debug')", "not found"),
    ("string.dump(function() end)", "call a nil"),
    ("('x'):dump()", "call a nil"),
    ("load('return 1')()", "call a nil"),
];

#[test]
fn tampering_is_refused() {
    for (code, needle) in REFUSED {
        let error = run(code).expect_err(code);
        assert_eq!(error.kind, ScriptErrorKind::Runtime, "{code}: {error}");
        assert!(error.message.contains(needle), "{code}: {error}");
    }
}

#[test]
fn tampering_attempts_never_reach_the_next_execution() {
    let mut engine = engine();
    let webhook = Webhook::default();
    for (code, _) in REFUSED {
        let _ = run_on(&mut engine, code, &webhook);
        let check = run_on(
            &mut engine,
            "request.body = string.upper('ok') .. tostring(table.insert ~= nil) .. \
             tostring(getmetatable('') == false) .. tostring(rawget(_G, 'string'))",
            &webhook,
        )
        .unwrap();
        assert_eq!(check.body.unwrap(), b"OKtruetruenil", "after {code}");
    }
}

#[test]
fn globals_tricks_stay_in_the_execution() {
    let mut engine = engine();
    let webhook = Webhook::default();
    run_on(
        &mut engine,
        "_G.leak = 'x' _ENV.leak2 = 'y' rawset(_G, 'leak3', 'z') string_copy = string",
        &webhook,
    )
    .unwrap();
    let request = run_on(
        &mut engine,
        "request.body = tostring(leak) .. tostring(leak2) .. tostring(leak3) .. tostring(string_copy)",
        &webhook,
    )
    .unwrap();
    assert_eq!(request.body.unwrap(), b"nilnilnilnil");
}

#[test]
fn pairs_over_libraries_still_works() {
    assert_eq!(
        body_of(
            "local n = 0 for k in pairs(string) do n = n + 1 end request.body = tostring(n > 10)"
        ),
        "true"
    );
}

#[test]
fn randomseed_cannot_fix_other_tenants_numbers() {
    let mut engine = engine();
    let webhook = Webhook::default();
    let seeded = "math.randomseed(42) request.body = tostring(math.random(1, 1000000000))";
    let first = run_on(&mut engine, seeded, &webhook).unwrap().body;
    let second = run_on(&mut engine, seeded, &webhook).unwrap().body;
    assert_ne!(
        first, second,
        "randomseed must not reset the shared generator"
    );
}

#[test]
fn coroutines_work_inside_the_sandbox() {
    assert_eq!(
        body_of(
            "local co = coroutine.wrap(function() coroutine.yield(1) coroutine.yield(2) end) \
             request.body = co() .. co()"
        ),
        "12"
    );
}

#[test]
fn wrapper_escape_attempts_fail_to_compile() {
    // Closing the wrapper function early would run code at chunk level, once, at compile time.
    for code in [
        "end local shared = {} return function(_ENV) shared.x = 1",
        "end\nreturn function(_ENV)",
    ] {
        let error = run(code).unwrap_err();
        assert_eq!(error.kind, ScriptErrorKind::Syntax, "{code}: {error}");
    }
}
