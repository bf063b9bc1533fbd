//! Lua 5.4 string patterns (`string.find`, `match`, `gmatch`, `gsub`), reimplemented so that a
//! match can be stopped at the execution's deadline.
//!
//! Why not the C library's: its matcher is one C call that never meets the instruction hook,
//! and backtracking makes it polynomial of high degree — `("a"):rep(300):find(".-.-.-b")` runs
//! for seconds, and a plain `find` of a long needle is O(n·m). A stuck C call could only be
//! abandoned with its thread still spinning (review H4). This matcher follows the reference
//! semantics of `lstrlib.c` step for step (same captures, anchors, `%b`, `%f`, back-references,
//! error messages, `gmatch`'s and `gsub`'s empty-match rules), counts its steps, and every
//! [`CHECK_EVERY`] steps asks the execution whether its deadline has passed. Plain finds use a
//! linear substring search (`memchr::memmem`).

use std::cell::RefCell;
use std::rc::Rc;

use mlua::{Function, Lua, LuaString, MultiValue, Table, Value};

use super::context::ExecutionContext;

/// Steps between two deadline checks; a step is a few nanoseconds, so the overshoot past the
/// deadline stays in the microseconds.
const CHECK_EVERY: u32 = 4096;
/// `MAXCCALLS` of `lstrlib.c`: how deep the matcher may recurse.
const MAX_MATCH_DEPTH: u32 = 200;
/// `LUA_MAXCAPTURES`.
const MAX_CAPTURES: usize = 32;
const ESC: u8 = b'%';
const SPECIALS: &[u8] = b"^$*+?.([%-";

/// Replaces the string library's pattern functions with these. The string metatable's
/// `__index` is the string library, so `("x"):find(...)` uses them too.
pub(crate) fn install(lua: &Lua, context: &Rc<ExecutionContext>) -> mlua::Result<()> {
    let string: Table = lua.globals().raw_get("string")?;
    let ctx = Rc::clone(context);
    string.raw_set(
        "find",
        lua.create_function(move |lua, args: MultiValue| find_aux(lua, &ctx, args, true))?,
    )?;
    let ctx = Rc::clone(context);
    string.raw_set(
        "match",
        lua.create_function(move |lua, args: MultiValue| find_aux(lua, &ctx, args, false))?,
    )?;
    let ctx = Rc::clone(context);
    string.raw_set(
        "gmatch",
        lua.create_function(move |lua, args: MultiValue| gmatch(lua, &ctx, args))?,
    )?;
    let ctx = Rc::clone(context);
    string.raw_set(
        "gsub",
        lua.create_function(move |lua, args: MultiValue| gsub(lua, &ctx, args))?,
    )?;
    Ok(())
}

/// Why a match stopped without an answer.
#[derive(Debug)]
enum Stop {
    /// The pattern is malformed, or uses a capture wrongly: Lua's message.
    Invalid(String),
    /// The execution's deadline passed.
    Deadline,
}

impl From<Stop> for mlua::Error {
    fn from(stop: Stop) -> Self {
        match stop {
            Stop::Invalid(message) => mlua::Error::runtime(message),
            // The same error the instruction hook raises; the engine classifies it by the
            // context's timed-out flag, which `check_deadline` has set.
            Stop::Deadline => mlua::Error::runtime("script timeout"),
        }
    }
}

#[derive(Clone, Copy)]
enum CaptureLen {
    Unfinished,
    Position,
    Len(usize),
}

#[derive(Clone, Copy)]
struct Capture {
    init: usize,
    len: CaptureLen,
}

/// One match attempt's state (`MatchState` in `lstrlib.c`); positions are byte indexes.
struct Matcher<'a> {
    src: &'a [u8],
    pat: &'a [u8],
    depth: u32,
    level: usize,
    captures: [Capture; MAX_CAPTURES],
    steps: u32,
    context: &'a ExecutionContext,
}

fn invalid<T>(message: impl Into<String>) -> Result<T, Stop> {
    Err(Stop::Invalid(message.into()))
}

impl<'a> Matcher<'a> {
    fn new(src: &'a [u8], pat: &'a [u8], context: &'a ExecutionContext) -> Self {
        Self {
            src,
            pat,
            depth: MAX_MATCH_DEPTH,
            level: 0,
            captures: [Capture {
                init: 0,
                len: CaptureLen::Unfinished,
            }; MAX_CAPTURES],
            steps: 0,
            context,
        }
    }

    fn reset(&mut self) {
        self.level = 0;
        self.depth = MAX_MATCH_DEPTH;
    }

    /// Counts one step; every `CHECK_EVERY` steps, stops once the deadline has passed.
    #[inline]
    fn step(&mut self) -> Result<(), Stop> {
        self.steps = self.steps.wrapping_add(1);
        if self.steps.is_multiple_of(CHECK_EVERY) && self.context.check_deadline() {
            return Err(Stop::Deadline);
        }
        Ok(())
    }

    /// The pattern byte at `p`, or 0 past its end (C reads the terminating NUL there).
    #[inline]
    fn pat_at(&self, p: usize) -> u8 {
        self.pat.get(p).copied().unwrap_or(0)
    }

    /// Where the single-character class starting at `p` ends.
    fn class_end(&self, mut p: usize) -> Result<usize, Stop> {
        let c = self.pat[p];
        p += 1;
        if c == ESC {
            if p >= self.pat.len() {
                return invalid("malformed pattern (ends with '%')");
            }
            return Ok(p + 1);
        }
        if c == b'[' {
            if self.pat_at(p) == b'^' {
                p += 1;
            }
            // Look for a ']'; the first character of the set may be one.
            loop {
                if p >= self.pat.len() {
                    return invalid("malformed pattern (missing ']')");
                }
                let c = self.pat[p];
                p += 1;
                if c == ESC && p < self.pat.len() {
                    p += 1;
                }
                if self.pat_at(p) == b']' {
                    break;
                }
            }
            return Ok(p + 1);
        }
        Ok(p)
    }

    /// Whether `c` is in the set `[...]` spanning `p` (the `[`) to `ec` (the `]`).
    fn match_bracket_class(&self, c: u8, mut p: usize, ec: usize) -> bool {
        let mut sig = true;
        if self.pat_at(p + 1) == b'^' {
            sig = false;
            p += 1;
        }
        loop {
            p += 1;
            if p >= ec {
                break;
            }
            if self.pat[p] == ESC {
                p += 1;
                if match_class(c, self.pat_at(p)) {
                    return sig;
                }
            } else if self.pat_at(p + 1) == b'-' && p + 2 < ec {
                p += 2;
                if self.pat[p - 2] <= c && c <= self.pat[p] {
                    return sig;
                }
            } else if self.pat[p] == c {
                return sig;
            }
        }
        !sig
    }

    fn single_match(&self, s: usize, p: usize, ep: usize) -> bool {
        let Some(&c) = self.src.get(s) else {
            return false;
        };
        match self.pat[p] {
            b'.' => true,
            ESC => match_class(c, self.pat_at(p + 1)),
            b'[' => self.match_bracket_class(c, p, ep - 1),
            literal => literal == c,
        }
    }

    fn match_balance(&mut self, s: usize, p: usize) -> Result<Option<usize>, Stop> {
        if p + 1 >= self.pat.len() {
            return invalid("malformed pattern (missing arguments to '%b')");
        }
        if self.src.get(s) != Some(&self.pat[p]) {
            return Ok(None);
        }
        let (open, close) = (self.pat[p], self.pat[p + 1]);
        let mut depth = 1;
        let mut s = s + 1;
        while s < self.src.len() {
            self.step()?;
            let c = self.src[s];
            if c == close {
                depth -= 1;
                if depth == 0 {
                    return Ok(Some(s + 1));
                }
            } else if c == open {
                depth += 1;
            }
            s += 1;
        }
        Ok(None)
    }

    fn max_expand(&mut self, s: usize, p: usize, ep: usize) -> Result<Option<usize>, Stop> {
        let mut i = 0;
        while self.single_match(s + i, p, ep) {
            self.step()?;
            i += 1;
        }
        // Try with the most repetitions first, then one fewer each time.
        loop {
            self.step()?;
            if let Some(end) = self.do_match(s + i, ep + 1)? {
                return Ok(Some(end));
            }
            if i == 0 {
                return Ok(None);
            }
            i -= 1;
        }
    }

    fn min_expand(&mut self, mut s: usize, p: usize, ep: usize) -> Result<Option<usize>, Stop> {
        loop {
            self.step()?;
            if let Some(end) = self.do_match(s, ep + 1)? {
                return Ok(Some(end));
            }
            if self.single_match(s, p, ep) {
                s += 1;
            } else {
                return Ok(None);
            }
        }
    }

    fn start_capture(
        &mut self,
        s: usize,
        p: usize,
        len: CaptureLen,
    ) -> Result<Option<usize>, Stop> {
        if self.level >= MAX_CAPTURES {
            return invalid("too many captures");
        }
        self.captures[self.level] = Capture { init: s, len };
        self.level += 1;
        let result = self.do_match(s, p)?;
        if result.is_none() {
            self.level -= 1;
        }
        Ok(result)
    }

    fn end_capture(&mut self, s: usize, p: usize) -> Result<Option<usize>, Stop> {
        let Some(l) = (0..self.level)
            .rev()
            .find(|&l| matches!(self.captures[l].len, CaptureLen::Unfinished))
        else {
            return invalid("invalid pattern capture");
        };
        self.captures[l].len = CaptureLen::Len(s - self.captures[l].init);
        let result = self.do_match(s, p)?;
        if result.is_none() {
            self.captures[l].len = CaptureLen::Unfinished;
        }
        Ok(result)
    }

    fn check_capture(&self, c: u8) -> Result<usize, Stop> {
        let l = i32::from(c) - i32::from(b'1');
        if l < 0
            || l as usize >= self.level
            || matches!(self.captures[l as usize].len, CaptureLen::Unfinished)
        {
            return invalid(format!("invalid capture index %{}", l + 1));
        }
        Ok(l as usize)
    }

    fn match_capture(&mut self, s: usize, c: u8) -> Result<Option<usize>, Stop> {
        let l = self.check_capture(c)?;
        let capture = self.captures[l];
        let len = match capture.len {
            CaptureLen::Len(len) => len,
            // `lstrlib.c` compares a position capture's length (-2) as a huge unsigned number:
            // a back-reference to it never matches.
            CaptureLen::Position | CaptureLen::Unfinished => return Ok(None),
        };
        if self.src.len() - s >= len
            && self.src[capture.init..capture.init + len] == self.src[s..s + len]
        {
            Ok(Some(s + len))
        } else {
            Ok(None)
        }
    }

    /// `match` of `lstrlib.c`: where a match of the pattern from `p` on starting at `s` ends.
    fn do_match(&mut self, mut s: usize, mut p: usize) -> Result<Option<usize>, Stop> {
        if self.depth == 0 {
            return invalid("pattern too complex");
        }
        self.depth -= 1;
        let result = loop {
            self.step()?;
            if p == self.pat.len() {
                break Some(s);
            }
            match self.pat[p] {
                b'(' => {
                    break if self.pat_at(p + 1) == b')' {
                        self.start_capture(s, p + 2, CaptureLen::Position)?
                    } else {
                        self.start_capture(s, p + 1, CaptureLen::Unfinished)?
                    };
                }
                b')' => break self.end_capture(s, p + 1)?,
                b'$' if p + 1 == self.pat.len() => {
                    break (s == self.src.len()).then_some(s);
                }
                ESC if self.pat_at(p + 1) == b'b' => match self.match_balance(s, p + 2)? {
                    Some(end) => {
                        s = end;
                        p += 4;
                        continue;
                    }
                    None => break None,
                },
                ESC if self.pat_at(p + 1) == b'f' => {
                    p += 2;
                    if self.pat_at(p) != b'[' {
                        return invalid("missing '[' after '%f' in pattern");
                    }
                    let ep = self.class_end(p)?;
                    let previous = if s == 0 { 0 } else { self.src[s - 1] };
                    let current = self.src.get(s).copied().unwrap_or(0);
                    if !self.match_bracket_class(previous, p, ep - 1)
                        && self.match_bracket_class(current, p, ep - 1)
                    {
                        p = ep;
                        continue;
                    }
                    break None;
                }
                ESC if self.pat_at(p + 1).is_ascii_digit() => {
                    match self.match_capture(s, self.pat[p + 1])? {
                        Some(end) => {
                            s = end;
                            p += 2;
                            continue;
                        }
                        None => break None,
                    }
                }
                _ => {
                    let ep = self.class_end(p)?;
                    let suffix = self.pat_at(ep);
                    if !self.single_match(s, p, ep) {
                        if matches!(suffix, b'*' | b'?' | b'-') {
                            // Accepts zero repetitions: go on after the suffix.
                            p = ep + 1;
                            continue;
                        }
                        break None;
                    }
                    match suffix {
                        b'?' => match self.do_match(s + 1, ep + 1)? {
                            Some(end) => break Some(end),
                            None => {
                                p = ep + 1;
                                continue;
                            }
                        },
                        b'+' => break self.max_expand(s + 1, p, ep)?,
                        b'*' => break self.max_expand(s, p, ep)?,
                        b'-' => break self.min_expand(s, p, ep)?,
                        _ => {
                            s += 1;
                            p = ep;
                            continue;
                        }
                    }
                }
            }
        };
        self.depth += 1;
        Ok(result)
    }

    /// Capture `i` of the match `s..e` (the whole match when the pattern has none).
    fn capture_value(&self, lua: &Lua, i: usize, s: usize, e: usize) -> mlua::Result<Value> {
        if i >= self.level {
            if i != 0 {
                return Err(mlua::Error::runtime(format!(
                    "invalid capture index %{}",
                    i + 1
                )));
            }
            return Ok(Value::String(lua.create_string(&self.src[s..e])?));
        }
        let capture = self.captures[i];
        match capture.len {
            CaptureLen::Unfinished => Err(mlua::Error::runtime("unfinished capture")),
            CaptureLen::Position => Ok(Value::Integer(capture.init as i64 + 1)),
            CaptureLen::Len(len) => Ok(Value::String(
                lua.create_string(&self.src[capture.init..capture.init + len])?,
            )),
        }
    }

    /// Every capture of the match `s..e`, or the whole match when there are none (`whole`).
    fn captures(
        &self,
        lua: &Lua,
        s: usize,
        e: usize,
        whole: bool,
        out: &mut Vec<Value>,
    ) -> mlua::Result<()> {
        let count = if self.level == 0 && whole {
            1
        } else {
            self.level
        };
        for i in 0..count {
            out.push(self.capture_value(lua, i, s, e)?);
        }
        Ok(())
    }
}

/// `%a`, `%d`, ... in the C locale; an upper-case class is the complement.
fn match_class(c: u8, class: u8) -> bool {
    let result = match class.to_ascii_lowercase() {
        b'a' => c.is_ascii_alphabetic(),
        b'c' => c.is_ascii_control(),
        b'd' => c.is_ascii_digit(),
        b'g' => c.is_ascii_graphic(),
        b'l' => c.is_ascii_lowercase(),
        b'p' => c.is_ascii_punctuation(),
        // C's isspace: also the vertical tab, which Rust's is_ascii_whitespace leaves out.
        b's' => matches!(c, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r'),
        b'u' => c.is_ascii_uppercase(),
        b'w' => c.is_ascii_alphanumeric(),
        b'x' => c.is_ascii_hexdigit(),
        _ => return class == c,
    };
    if class.is_ascii_uppercase() {
        !result
    } else {
        result
    }
}

/// `posrelat` for a start position: 1-based, negative from the end, clamped to 1.
fn start_index(pos: i64, len: usize) -> usize {
    if pos > 0 {
        pos as usize
    } else if pos == 0 || pos.unsigned_abs() > len as u64 {
        1
    } else {
        (len as i64 + pos + 1) as usize
    }
}

fn arg(args: &MultiValue, i: usize) -> Value {
    args.get(i).cloned().unwrap_or(Value::Nil)
}

fn string_arg(lua: &Lua, args: &MultiValue, i: usize, function: &str) -> mlua::Result<LuaString> {
    let value = arg(args, i);
    let type_name = value.type_name();
    lua.coerce_string(value)?.ok_or_else(|| {
        mlua::Error::runtime(format!(
            "bad argument #{} to '{function}' (string expected, got {type_name})",
            i + 1
        ))
    })
}

fn optional_integer(
    lua: &Lua,
    args: &MultiValue,
    i: usize,
    default: i64,
    function: &str,
) -> mlua::Result<i64> {
    match arg(args, i) {
        Value::Nil => Ok(default),
        value => {
            let type_name = value.type_name();
            lua.coerce_integer(value)?.ok_or_else(|| {
                mlua::Error::runtime(format!(
                    "bad argument #{} to '{function}' (number has no integer representation, \
                     or {type_name} given)",
                    i + 1
                ))
            })
        }
    }
}

fn truthy(value: &Value) -> bool {
    !matches!(value, Value::Nil | Value::Boolean(false))
}

/// `string.find` (`find`) and `string.match`.
fn find_aux(
    lua: &Lua,
    context: &ExecutionContext,
    args: MultiValue,
    find: bool,
) -> mlua::Result<MultiValue> {
    let name = if find { "find" } else { "match" };
    let subject = string_arg(lua, &args, 0, name)?;
    let pattern = string_arg(lua, &args, 1, name)?;
    let (src, pat) = (subject.as_bytes(), pattern.as_bytes());
    let init = start_index(optional_integer(lua, &args, 2, 1, name)?, src.len()) - 1;
    if init > src.len() {
        return Ok(MultiValue::from_iter([Value::Nil]));
    }
    if find && (truthy(&arg(&args, 3)) || !pat.iter().any(|b| SPECIALS.contains(b))) {
        // Plain search: linear, so nothing to interrupt.
        return Ok(match memchr::memmem::find(&src[init..], &pat) {
            Some(at) => MultiValue::from_iter([
                Value::Integer((init + at + 1) as i64),
                Value::Integer((init + at + pat.len()) as i64),
            ]),
            None => MultiValue::from_iter([Value::Nil]),
        });
    }
    let (anchor, pat) = match pat.first() {
        Some(b'^') => (true, &pat[1..]),
        _ => (false, &pat[..]),
    };
    let mut matcher = Matcher::new(&src, pat, context);
    let mut start = init;
    loop {
        matcher.reset();
        if let Some(end) = matcher.do_match(start, 0)? {
            let mut out = Vec::with_capacity(matcher.level + 2);
            if find {
                out.push(Value::Integer(start as i64 + 1));
                out.push(Value::Integer(end as i64));
                matcher.captures(lua, start, end, false, &mut out)?;
            } else {
                matcher.captures(lua, start, end, true, &mut out)?;
            }
            return Ok(MultiValue::from_iter(out));
        }
        start += 1;
        if anchor || start > src.len() {
            return Ok(MultiValue::from_iter([Value::Nil]));
        }
    }
}

/// `string.gmatch(s, pattern [, init])`: an iterator over the matches. A `^` is literal here,
/// and a match may not end where the previous one ended (no empty match right after a match).
fn gmatch(lua: &Lua, context: &Rc<ExecutionContext>, args: MultiValue) -> mlua::Result<Function> {
    let subject = string_arg(lua, &args, 0, "gmatch")?;
    let pattern = string_arg(lua, &args, 1, "gmatch")?;
    let len = subject.as_bytes().len();
    let mut init = start_index(optional_integer(lua, &args, 2, 1, "gmatch")?, len) - 1;
    if init > len {
        init = len + 1;
    }
    struct State {
        next: usize,
        last_match: Option<usize>,
    }
    let state = RefCell::new(State {
        next: init,
        last_match: None,
    });
    let context = Rc::clone(context);
    lua.create_function(move |lua, ()| {
        let (src, pat) = (subject.as_bytes(), pattern.as_bytes());
        let mut state = state.borrow_mut();
        let mut matcher = Matcher::new(&src, &pat, &context);
        let mut start = state.next;
        while start <= src.len() {
            matcher.reset();
            if let Some(end) = matcher.do_match(start, 0)?
                && Some(end) != state.last_match
            {
                state.next = end;
                state.last_match = Some(end);
                let mut out = Vec::with_capacity(matcher.level.max(1));
                matcher.captures(lua, start, end, true, &mut out)?;
                return Ok(MultiValue::from_iter(out));
            }
            start += 1;
        }
        state.next = start;
        Ok(MultiValue::new())
    })
}

/// `string.gsub(s, pattern, repl [, n])`.
fn gsub(lua: &Lua, context: &ExecutionContext, args: MultiValue) -> mlua::Result<MultiValue> {
    let subject = string_arg(lua, &args, 0, "gsub")?;
    let pattern = string_arg(lua, &args, 1, "gsub")?;
    let replacement = arg(&args, 2);
    let replacement = match replacement {
        Value::Integer(_) | Value::Number(_) => {
            Replacement::Text(lua.coerce_string(replacement)?.expect("a number converts"))
        }
        Value::String(text) => Replacement::Text(text),
        Value::Table(table) => Replacement::Table(table),
        Value::Function(function) => Replacement::Function(function),
        other => {
            return Err(mlua::Error::runtime(format!(
                "bad argument #3 to 'gsub' (string/function/table expected, got {})",
                other.type_name()
            )));
        }
    };
    let (src, pat) = (subject.as_bytes(), pattern.as_bytes());
    let max = optional_integer(lua, &args, 3, src.len() as i64 + 1, "gsub")?;
    let (anchor, pat) = match pat.first() {
        Some(b'^') => (true, &pat[1..]),
        _ => (false, &pat[..]),
    };
    let mut matcher = Matcher::new(&src, pat, context);
    let mut out: Vec<u8> = Vec::new();
    let (mut start, mut count, mut changed) = (0usize, 0i64, false);
    let mut last_match = None;
    while count < max {
        matcher.reset();
        match matcher.do_match(start, 0)? {
            Some(end) if Some(end) != last_match => {
                count += 1;
                changed |= replacement.add(lua, &matcher, start, end, &mut out)?;
                start = end;
                last_match = Some(end);
            }
            _ if start < src.len() => {
                out.push(src[start]);
                start += 1;
            }
            _ => break,
        }
        if anchor {
            break;
        }
    }
    let result = if changed {
        out.extend_from_slice(&src[start..]);
        Value::String(lua.create_string(&out)?)
    } else {
        // Unchanged: the first argument itself, as `lstrlib.c` returns it (a number stays one).
        arg(&args, 0)
    };
    Ok(MultiValue::from_iter([result, Value::Integer(count)]))
}

enum Replacement {
    Text(LuaString),
    Table(Table),
    Function(Function),
}

impl Replacement {
    /// Appends the replacement of the match `s..e`; false when the original text was kept
    /// (a table or function answered false or nil).
    fn add(
        &self,
        lua: &Lua,
        matcher: &Matcher<'_>,
        s: usize,
        e: usize,
        out: &mut Vec<u8>,
    ) -> mlua::Result<bool> {
        let value = match self {
            Replacement::Text(text) => {
                add_text(lua, matcher, &text.as_bytes(), s, e, out)?;
                return Ok(true);
            }
            Replacement::Table(table) => {
                table.get::<Value>(matcher.capture_value(lua, 0, s, e)?)?
            }
            Replacement::Function(function) => {
                let mut captures = Vec::new();
                matcher.captures(lua, s, e, true, &mut captures)?;
                function.call::<Value>(MultiValue::from_iter(captures))?
            }
        };
        if !truthy(&value) {
            out.extend_from_slice(&matcher.src[s..e]);
            return Ok(false);
        }
        let type_name = value.type_name();
        match value {
            Value::String(_) | Value::Integer(_) | Value::Number(_) => {
                let text = lua
                    .coerce_string(value)?
                    .expect("strings and numbers convert");
                out.extend_from_slice(&text.as_bytes());
                Ok(true)
            }
            _ => Err(mlua::Error::runtime(format!(
                "invalid replacement value (a {type_name})"
            ))),
        }
    }
}

/// A replacement string: `%0` the whole match, `%1`-`%9` captures, `%%` a percent sign.
fn add_text(
    lua: &Lua,
    matcher: &Matcher<'_>,
    text: &[u8],
    s: usize,
    e: usize,
    out: &mut Vec<u8>,
) -> mlua::Result<()> {
    let mut rest = text;
    while let Some(at) = memchr::memchr(ESC, rest) {
        out.extend_from_slice(&rest[..at]);
        let next = rest.get(at + 1).copied().unwrap_or(0);
        match next {
            ESC => out.push(ESC),
            b'0' => out.extend_from_slice(&matcher.src[s..e]),
            b'1'..=b'9' => match matcher.capture_value(lua, usize::from(next - b'1'), s, e)? {
                Value::Integer(position) => out.extend_from_slice(position.to_string().as_bytes()),
                Value::String(capture) => out.extend_from_slice(&capture.as_bytes()),
                _ => unreachable!("captures are strings or positions"),
            },
            _ => {
                return Err(mlua::Error::runtime(
                    "invalid use of '%' in replacement string",
                ));
            }
        }
        rest = rest.get(at + 2..).unwrap_or_default();
    }
    out.extend_from_slice(rest);
    Ok(())
}
