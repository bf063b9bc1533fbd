-- The sandbox prelude: runs once per VM, with the VM's real globals, and returns the `base`
-- table every execution's fresh environment falls back to (through a protected __index).
--
-- Invariants a reader must keep:
-- * Nothing shared between executions is writable from a script. Library and module tables are
--   read-only proxies; their metatables are protected; rawset refuses proxies; the string
--   metatable is protected, and its __index is the trimmed string library (no string.dump).
-- * A script cannot survive its own abort: pcall, xpcall and coroutine.resume re-raise once the
--   execution has timed out, so `while true do pcall(f) end` still stops, and an xpcall message
--   handler (which Lua runs with hooks off when the hook raised) does not run after the abort.
-- * No finalizers: setmetatable refuses a metatable with __gc, since a finalizer would run later,
--   during another tenant's execution.
-- * No reference to a real (writable) library or module table ever reaches a script: pairs() on
--   a proxy iterates through a closure over the real table instead of returning it (Lua 5.4's
--   pairs returns whatever __pairs returns), and the string metatable's __index is the proxy.
-- * No C library call loops unboundedly without allocating: the table functions whose loops are
--   driven by caller-given ranges or lengths (move, concat, insert, remove) run large ranges in
--   chunks, between which the instruction hook can stop them; sort is capped; the pattern
--   functions are the host's deadline-checking matcher (pattern.rs).
local host = ...

local error, type, tostring, select, next = error, type, tostring, select, next
local raw_setmetatable, raw_rawset, raw_rawget = setmetatable, rawset, rawget
local raw_pcall, raw_xpcall, raw_collectgarbage = pcall, xpcall, collectgarbage
local aborted, log_line, concat = host.aborted, host.log_line, table.concat
local check_deadline = host.check_deadline

local readonly_tables = raw_setmetatable({}, { __mode = "k" })
-- Tables the host made read-only itself (json.empty_array): rawset must refuse them too.
for _, t in next, host.frozen do readonly_tables[t] = true end

local function readonly(name, real)
  local proxy = {}
  raw_setmetatable(proxy, {
    __index = real,
    __newindex = function()
      error("attempt to modify read-only table '" .. name .. "'", 2)
    end,
    -- Never `return next, real`: that hands the script the real table.
    __pairs = function(self)
      return function(_, key) return next(real, key) end, self, nil
    end,
    __len = function() return #real end,
    __metatable = false,
  })
  readonly_tables[proxy] = true
  return proxy
end

local function copy(t)
  local c = {}
  for k, v in next, t do c[k] = v end
  return c
end

-- Re-raises the abort of a timed-out execution; passes every other result through.
local function check(ok, ...)
  if not ok and aborted() then error((...), 0) end
  return ok, ...
end

-- string: the library minus dump; ("x"):method() finds it through the string metatable, whose
-- __index is the read-only proxy (set below), never the real table.
string.dump = nil
local string_mt = getmetatable("")
string_mt.__metatable = false

-- Table functions whose C loops run over a caller-given range (or a __len the caller controls)
-- without allocating: `table.move({}, 1, 1 << 62, 2)` would spin for years inside one C call,
-- out of the hook's reach. Large ranges go through in chunks of CHUNK elements, and each chunk
-- checks the deadline (the instruction hook alone would wait hundreds of chunks, since one chunk
-- is a handful of instructions around a long C call). Small ranges take the C path unchanged.
local CHUNK = 4096
local MAX_SORT = 1 << 20
local maxinteger, tointeger, min, max = math.maxinteger, math.tointeger, math.min, math.max
local math_type = math.type
local raw_move, raw_concat, raw_insert, raw_remove, raw_sort =
  table.move, table.concat, table.insert, table.remove, table.sort

-- An integer argument as luaL_checkinteger reads it (integer, integral float, numeric string),
-- or nil: the caller then lets the C function raise its own argument error.
local function integer(value)
  if type(value) == "string" then value = tonumber(value) end
  if type(value) ~= "number" then return nil end
  return tointeger(value)
end

table.move = function(a1, f, e, t, a2)
  local fi, ei, ti = integer(f), integer(e), integer(t)
  -- The C checks, in its order: a range it refuses, or a small one, goes to it directly.
  if type(a1) ~= "table" or not fi or not ei or not ti or ei < fi
    or not (fi > 0 or ei < maxinteger + fi) then
    return raw_move(a1, f, e, t, a2)
  end
  local n = ei - fi
  if n < CHUNK or ti > maxinteger - n then return raw_move(a1, f, e, t, a2) end
  local dest = a2
  if dest == nil then dest = a1 end
  if type(dest) ~= "table" then return raw_move(a1, f, e, t, a2) end
  if ti > ei or ti <= fi or dest ~= a1 then
    for lo = 0, n, CHUNK do
      check_deadline()
      local hi = min(lo + CHUNK - 1, n)
      raw_move(a1, fi + lo, fi + hi, ti + lo, dest)
    end
  else
    -- Overlapping, destination above the source: the highest chunk first.
    local hi = n
    while hi >= 0 do
      check_deadline()
      local lo = max(hi - CHUNK + 1, 0)
      raw_move(a1, fi + lo, fi + hi, ti + lo, dest)
      hi = lo - 1
    end
  end
  return dest
end

table.concat = function(list, sep, i, j)
  if type(list) ~= "table" then return raw_concat(list, sep, i, j) end
  local ii = i == nil and 1 or integer(i)
  local ji = j == nil and #list or integer(j)
  if not ii or not ji or ji < ii or ji - ii < CHUNK then return raw_concat(list, sep, i, j) end
  local parts, n = {}, 0
  local lo = ii
  while true do
    check_deadline()
    local hi = (ji - lo < CHUNK) and ji or lo + CHUNK - 1
    n = n + 1
    parts[n] = raw_concat(list, sep, lo, hi)
    if hi == ji then break end
    lo = hi + 1
  end
  return raw_concat(parts, sep)
end

-- insert and remove shift every element between the position and #t (which __len decides):
-- past CHUNK elements the shift is the same get/set sequence, in Lua.
table.insert = function(t, ...)
  local nargs = select("#", ...)
  if nargs ~= 2 or type(t) ~= "table" then return raw_insert(t, ...) end
  local pos, value = ...
  local n = #t
  if math_type(n) ~= "integer" then return raw_insert(t, ...) end
  local e, p = n + 1, integer(pos)
  if not p or e - p < CHUNK or p < 1 or p > e then
    return raw_insert(t, ...)
  end
  for i = e, p + 1, -1 do t[i] = t[i - 1] end
  t[p] = value
end

table.remove = function(t, pos)
  if type(t) ~= "table" then return raw_remove(t, pos) end
  local size = #t
  if math_type(size) ~= "integer" then return raw_remove(t, pos) end
  local p = pos == nil and size or integer(pos)
  if not p or size - p < CHUNK or p < 1 or p > size + 1 then
    return raw_remove(t, pos)
  end
  local value = t[p]
  while p < size do
    t[p] = t[p + 1]
    p = p + 1
  end
  t[p] = nil
  return value
end

table.sort = function(t, comp)
  if type(t) == "table" then
    local n = #t
    if math_type(n) == "integer" and n > MAX_SORT then
      error("table.sort: at most " .. MAX_SORT .. " elements in a script (got " .. n .. ")", 2)
    end
  end
  return raw_sort(t, comp)
end

-- string.rep copies s and sep n times in a C loop; when both are empty the loop allocates nothing
-- and runs n times, out of the hook's and the memory limit's reach: rep("", 1 << 62) would spin
-- for years. The result is "" whatever n is, so that case answers at once. (A non-empty result
-- is allocated whole before the loop, so the memory limit bounds every other case.)
local raw_rep = string.rep
string.rep = function(s, n, sep)
  if s == "" and (sep == nil or sep == "") and integer(n) then return "" end
  return raw_rep(s, n, sep)
end

local safe_math = copy(math)
-- The PRNG state is shared by every tenant on this VM; reseeding would let one script make
-- another's numbers predictable.
safe_math.randomseed = function() end

local safe_coroutine = copy(coroutine)
local raw_resume = coroutine.resume
safe_coroutine.resume = function(co, ...) return check(raw_resume(co, ...)) end

local allowed_gc = { count = true, step = true, collect = true, isrunning = true }

local string_proxy = readonly("string", string)
string_mt.__index = string_proxy

local base = {
  _VERSION = _VERSION,
  assert = assert,
  error = error,
  getmetatable = getmetatable,
  ipairs = ipairs,
  next = next,
  pairs = pairs,
  rawequal = rawequal,
  rawget = raw_rawget,
  rawlen = rawlen,
  select = select,
  tonumber = tonumber,
  tostring = tostring,
  type = type,
  unpack = table.unpack,
  pcall = function(f, ...) return check(raw_pcall(f, ...)) end,
  -- Lua calls a message handler for an error raised by the hook while hooks are still off, so
  -- a looping handler would run unchecked: once aborted, the handler is skipped.
  xpcall = function(f, handler, ...)
    local function guarded(e)
      if aborted() then return e end
      return handler(e)
    end
    return check(raw_xpcall(f, guarded, ...))
  end,
  setmetatable = function(t, mt)
    if type(mt) == "table" and raw_rawget(mt, "__gc") ~= nil then
      error("__gc metamethods are not allowed in scripts", 2)
    end
    return raw_setmetatable(t, mt)
  end,
  rawset = function(t, k, v)
    if readonly_tables[t] then error("attempt to modify a read-only table", 2) end
    return raw_rawset(t, k, v)
  end,
  collectgarbage = function(opt, ...)
    opt = opt or "collect"
    if not allowed_gc[opt] then
      error("collectgarbage('" .. tostring(opt) .. "') is not allowed in scripts", 2)
    end
    return raw_collectgarbage(opt, ...)
  end,
  -- print(...) writes one info line, its arguments tostring'ed and tab-separated.
  print = function(...)
    local parts = {}
    for i = 1, select("#", ...) do parts[i] = tostring((select(i, ...))) end
    log_line(concat(parts, "\t"))
  end,
  string = string_proxy,
  table = readonly("table", table),
  math = readonly("math", safe_math),
  utf8 = readonly("utf8", utf8),
  coroutine = readonly("coroutine", safe_coroutine),
  os = readonly("os", { time = os.time, date = os.date, clock = os.clock }),
}

local modules = {}
for name, module in next, host.modules do
  local proxy = readonly(name, module)
  modules[name] = proxy
  base[name] = proxy
end
local module_names = {}
for name in next, modules do module_names[#module_names + 1] = name end
table.sort(module_names)
local available = table.concat(module_names, ", ")

base.require = function(name)
  local module = modules[name]
  if module == nil then
    error("module '" .. tostring(name) .. "' not found (available: " .. available .. ")", 2)
  end
  return module
end

return base
