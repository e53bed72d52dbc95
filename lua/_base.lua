-- The ground every script stands on: numbers as the hashes hold them, the
-- clock, idle expiry and the event log. The library's files are put in front
-- of every operation in this order (see aimd_redis/scripts.py): _base,
-- _fields, _budget, _leases, _queue, _rules, _items. Each defines locals only and
-- reads no KEYS or ARGV: loaded as a function library, a file runs once at
-- load time, when Redis 7.0 lets no global (ipairs, string, math, ...) be
-- called, so only literals and function definitions here.
--
-- Every script validates everything it reads before its first write, because
-- Redis does not roll a script back when it errors half way.

-- Beyond these a value is a mistake, not a measurement: times past the year
-- 5000, counts no fleet reaches (aimd_redis/schema.py holds the same).
local MAX_TIME, MAX_COUNT = 1e11, 1e15

-- Plain decimal text: whole numbers exactly, others to 14 significant digits
-- (0.1 ms for times since the epoch), never in exponent form.
local function fmt(x)
  if x % 1 == 0 and x > -1e15 and x < 1e15 then return string.format('%d', x) end
  if (x >= 1e-4 and x < 1e14) or (x <= -1e-4 and x > -1e14) then return tostring(x) end
  -- Below 1e-4, as many decimals as 14 significant digits need (a stored
  -- setting of 1e-7 is not 0); above 1e14, to the microsecond.
  local a, digits = math.abs(x), 6
  if a < 1e-4 then digits = math.min(99, 14 - math.floor(math.log10(a))) end
  local s = string.gsub(string.format('%.' .. digits .. 'f', x), '0+$', '')
  return (string.gsub(s, '%.$', ''))
end

local function corrupt(key, name, text)
  return 'AIMD_CORRUPT ' .. key .. ' field ' .. name .. ' holds ' ..
    (text == nil and '(nothing)' or ('"' .. text .. '"'))
end

-- Seconds: the caller's injected value, else the server's clock (one clock
-- for the whole fleet, whatever the pods' own clocks say).
local function clock(arg)
  if arg ~= '' then return tonumber(arg) end
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

-- Idle expiry: every key gets its expiry when a script creates it.
local function expire_new(idle_ms, key)
  if idle_ms > 0 then redis.call('PEXPIRE', key, idle_ms) end
end

-- All of a model's keys are pushed back together once the probe key (the
-- domain hash) has aged by a tenth of idle_ms, so a steady stream of calls
-- costs one PTTL, not a PEXPIRE per key.
local function touch(idle_ms, probe, ...)
  if idle_ms <= 0 then return end
  local left = redis.call('PTTL', probe)
  if left >= 0 and left > idle_ms - idle_ms / 10 then return end
  redis.call('PEXPIRE', probe, idle_ms)
  for _, key in ipairs({...}) do redis.call('PEXPIRE', key, idle_ms) end
end

-- The event stream of a model is capped at about this many entries. The
-- stream is nearly all of a model's memory (about 60 bytes an entry: 60 KB
-- here, 1.8 KB for the rest of a model; benchmarks/event_memory.py), so a
-- thousand busy models cost 60 MB, and 1,000 entries still hold a ramp and
-- the last few dozen cut-and-climb cycles of a busy model.
local EVENTS_MAXLEN = '1000'

-- Events are collected while a script runs and written at its end, so that
-- nothing is written before validation has passed. from and to are numbers,
-- or text (a policy's name).
local events = {}
local function emit(domain, event, from, to)
  events[#events + 1] = {domain, event, type(from) == 'number' and fmt(from) or from,
    type(to) == 'number' and fmt(to) or to, type(from) ~= 'number', type(to) ~= 'number'}
end

-- Appends the events to the stream; returns them for the reply.
local function flush_events(stream_key, now, idle_ms)
  for _, e in ipairs(events) do
    redis.call('XADD', stream_key, 'MAXLEN', '~', EVENTS_MAXLEN, '*',
      'domain', e[1], 'event', e[2], 'from', e[3], 'to', e[4], 'at', fmt(now))
  end
  if #events > 0 then expire_new(idle_ms, stream_key) end
  return events
end

-- A reply, as JSON that the client decodes into its struct in one step.
-- cjson writes an empty table as an object: an empty list is left out.
local function reply(t)
  if t.events and #t.events == 0 then t.events = nil end
  if t.events then
    for i, e in ipairs(t.events) do
      t.events[i] = {e[1], e[2], e[5] and e[3] or tonumber(e[3]), e[6] and e[4] or tonumber(e[4])}
    end
  end
  return cjson.encode(t)
end

-- The events as a JSON member, written out by hand on the hot path (cjson
-- walks tables generically: a tenth of a call): names are quoted, numbers
-- are not; names, domains and events need no escaping.
local function events_json()
  if #events == 0 then return '' end
  local parts = {}
  for i, e in ipairs(events) do
    parts[i] = '["' .. e[1] .. '","' .. e[2] .. '",' .. (e[5] and '"' .. e[3] .. '"' or e[3]) .. ',' ..
      (e[6] and '"' .. e[4] .. '"' or e[4]) .. ']'
  end
  return ',"events":[' .. table.concat(parts, ',') .. ']'
end

-- The keys of one domain of a model, in the order the acquire and release
-- scripts take them.
local function domain_keys(K)
  return {cap = K[1], domain = K[2], leases = K[3], index = K[4], events = K[5], queue = K[6], beats = K[7],
          groups = K[8], want = K[9], handed = K[10], budget = K[11], tokens = K[12]}
end
