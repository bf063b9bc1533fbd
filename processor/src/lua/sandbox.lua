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
local host = ...

local error, type, tostring, select, next = error, type, tostring, select, next
local raw_setmetatable, raw_rawset, raw_rawget = setmetatable, rawset, rawget
local raw_pcall, raw_xpcall, raw_collectgarbage = pcall, xpcall, collectgarbage
local aborted, log_line, concat = host.aborted, host.log_line, table.concat

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
    __pairs = function() return next, real, nil end,
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

-- string: the library minus dump, also behind ("x"):method() through the string metatable.
string.dump = nil
local string_mt = getmetatable("")
string_mt.__index = string
string_mt.__metatable = false

local safe_math = copy(math)
-- The PRNG state is shared by every tenant on this VM; reseeding would let one script make
-- another's numbers predictable.
safe_math.randomseed = function() end

local safe_coroutine = copy(coroutine)
local raw_resume = coroutine.resume
safe_coroutine.resume = function(co, ...) return check(raw_resume(co, ...)) end

local allowed_gc = { count = true, step = true, collect = true, isrunning = true }

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
  string = readonly("string", string),
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
