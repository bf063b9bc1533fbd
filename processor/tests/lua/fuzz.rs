//! A property test over random scripts built from library calls with hostile arguments (huge and
//! negative ranges, C functions as metamethods, pattern bombs, tampering with the libraries).
//! Whatever a script does, the engine must not panic, must answer within its time budget, must
//! stay within its memory limit, and must leave nothing behind for the next execution.

use std::time::{Duration, Instant};

use proptest::prelude::*;

use crate::helpers::*;

const TIMEOUT: Duration = Duration::from_millis(50);
/// What past the budget still counts as "at the deadline": the hook's check interval, the
/// engine's bookkeeping, and a loaded 2-core CI machine.
const SLACK: Duration = Duration::from_millis(150);

fn number() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        Just("0"),
        Just("1"),
        Just("-1"),
        Just("3"),
        Just("4097"),
        Just("1 << 31"),
        Just("1 << 62"),
        Just("math.maxinteger"),
        Just("math.mininteger"),
        Just("2.5"),
        Just("'10'"),
        Just("nil"),
    ]
}

fn text() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        Just("''"),
        Just("'abc'"),
        Just("string.rep('a', 300)"),
        Just("string.rep('(', 5000)"),
        Just("payload"),
        Just("'.-.-.-.-b'"),
        Just("'%b()'"),
        Just("'(a*)*b'"),
        Just("'%'"),
        Just("'[a-'"),
    ]
}

fn table() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        Just("{}"),
        Just("{1, 2, 3}"),
        Just("t"),
        Just("setmetatable({}, {__index = table.concat})"),
        Just("setmetatable({}, {__index = tostring})"),
        Just("setmetatable({}, {__len = function() return 1 << 62 end})"),
        Just("setmetatable({}, {__index = function() return '' end})"),
        Just("string"),
        Just("table"),
        Just("json"),
        Just("_G"),
        Just("_ENV"),
    ]
}

fn library() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        Just("string"),
        Just("table"),
        Just("math"),
        Just("os"),
        Just("coroutine"),
        Just("utf8"),
        Just("json"),
        Just("base64"),
        Just("log"),
    ]
}

/// One statement: a library call with generated arguments, under pcall.
fn statement() -> impl Strategy<Value = String> {
    prop_oneof![
        (table(), number(), number(), number())
            .prop_map(|(t, a, b, c)| format!("table.move({t}, {a}, {b}, {c})")),
        (table(), text(), number(), number())
            .prop_map(|(t, s, a, b)| format!("table.concat({t}, {s}, {a}, {b})")),
        (table(), number()).prop_map(|(t, a)| format!("table.insert({t}, {a}, 'x')")),
        (table(), number()).prop_map(|(t, a)| format!("table.remove({t}, {a})")),
        (table(), number(), number()).prop_map(|(t, a, b)| format!("table.unpack({t}, {a}, {b})")),
        table().prop_map(|t| format!("table.sort({t})")),
        (text(), number(), text()).prop_map(|(s, n, sep)| format!("string.rep({s}, {n}, {sep})")),
        (text(), text(), number()).prop_map(|(s, p, i)| format!("string.find({s}, {p}, {i})")),
        (text(), text()).prop_map(|(s, p)| format!("string.match({s}, {p})")),
        (text(), text()).prop_map(|(s, p)| format!("for _ in string.gmatch({s}, {p}) do end")),
        (text(), text(), text()).prop_map(|(s, p, r)| format!("string.gsub({s}, {p}, {r})")),
        (text(), number(), number()).prop_map(|(s, a, b)| format!("string.byte({s}, {a}, {b})")),
        (text(), number()).prop_map(|(s, n)| format!("utf8.len({s}, {n})")),
        text().prop_map(|s| format!("json.decode({s})")),
        table().prop_map(|t| format!("json.encode({t})")),
        library().prop_map(|l| format!(
            "local _, s = pairs({l}) rawset(s, 'x', 1) s.upper = nil {l}.x = 1"
        )),
        library().prop_map(|l| format!("for k, v in pairs({l}) do rawset(v, 'x', 1) end")),
        library().prop_map(|l| format!("setmetatable({l}, nil)")),
        Just("getmetatable('').__index = {}".to_owned()),
        Just("t = t or {} t[#t + 1] = string.rep('z', 1000)".to_owned()),
        Just("while true do end".to_owned()),
        Just("leak = 'x' _G.leak2 = 'y'".to_owned()),
    ]
}

fn script() -> impl Strategy<Value = String> {
    proptest::collection::vec(statement(), 1..6).prop_map(|statements| {
        let mut code = String::from("local t = {1, 2, 3}\n");
        for statement in statements {
            code.push_str(&format!("pcall(function() {statement} end)\n"));
        }
        code
    })
}

/// What every execution must still see: the libraries' functions by name and type, working
/// string methods, and no global left by an earlier execution.
const FINGERPRINT: &str = r#"
local out = {}
for _, name in ipairs({"string", "table", "math", "os", "coroutine", "utf8", "json", "base64", "log"}) do
  local keys = {}
  for k, v in pairs(_ENV[name]) do keys[#keys + 1] = tostring(k) .. "=" .. type(v) end
  table.sort(keys)
  out[#out + 1] = name .. ":" .. table.concat(keys, ",")
end
out[#out + 1] = ("abc"):upper() .. tostring(string.find("hello", "l+"))
out[#out + 1] = tostring(leak) .. tostring(leak2) .. tostring(rawget(_G, "t"))
request.body = table.concat(out, "\n")
"#;

/// How long one case (the fingerprints and up to three scripts) may take before it counts as a
/// hang: a C loop out of the hook's reach never returns, and the test must fail, not stall.
const HANG: Duration = Duration::from_secs(10);

/// Runs the scripts on a fresh engine, each followed by the fingerprint; returns the first
/// violation, if any.
fn check(scripts: Vec<String>) -> Result<(), String> {
    let mut engine = limited_engine(TIMEOUT, 16);
    let webhook = Webhook::default();
    let baseline = run_on(&mut engine, FINGERPRINT, &webhook)
        .unwrap()
        .body
        .unwrap();
    for code in &scripts {
        let start = Instant::now();
        // Any outcome is fine but a panic; it must come back in time.
        let _ = run_on(&mut engine, code, &webhook);
        let elapsed = start.elapsed();
        if elapsed >= TIMEOUT + SLACK {
            return Err(format!("took {elapsed:?}:\n{code}"));
        }
        let after = run_on(&mut engine, FINGERPRINT, &webhook)
            .unwrap()
            .body
            .unwrap();
        if after != baseline {
            return Err(format!(
                "state survived:\n{code}\n{}\n!=\n{}",
                String::from_utf8_lossy(&after),
                String::from_utf8_lossy(&baseline)
            ));
        }
    }
    Ok(())
}

proptest! {
    // Shrinking is bounded: a hang leaves its thread spinning, and each shrink step that hangs
    // again would leave another.
    #![proptest_config(ProptestConfig {
        cases: 300,
        max_shrink_time: 30_000,
        max_shrink_iters: 512,
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_library_scripts_are_contained(scripts in proptest::collection::vec(script(), 1..4)) {
        let (sender, receiver) = std::sync::mpsc::channel();
        let shown = scripts.join("\n---\n");
        std::thread::spawn(move || {
            let _ = sender.send(check(scripts));
        });
        match receiver.recv_timeout(HANG) {
            Ok(outcome) => {
                if let Err(violation) = outcome {
                    prop_assert!(false, "{}", violation);
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                prop_assert!(false, "no answer after {:?}:\n{}", HANG, shown);
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                prop_assert!(false, "the engine panicked:\n{}", shown);
            }
        }
    }
}
