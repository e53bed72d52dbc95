-- Shared helpers, put in front of every operation (see aimd_redis/scripts.py).
-- Defines locals only: reads no KEYS or ARGV and writes nothing. Loaded as a
-- function library, this runs once at load time, when Redis 7.0 lets no
-- global (ipairs, string, math, ...) be called: only literals and function
-- definitions here, and in _rules.lua.
--
-- Every script validates everything it reads before its first write, because
-- Redis does not roll a script back when it errors half way.

-- The budgets' helpers (_budget.lua fills this table); declared first so that
-- the queue helpers below can use them.
local budget = {}

-- The domain hash's fields, in the order of the state reply, and their kinds
-- (for validating what a person may have HSET by hand):
--   pos: whole number >= 1, count: whole number >= 0, time: number >= 0, flag: 0 or 1
-- The first nine are the public state. Then: the last time a 429 confirmed
-- the ceiling, the ramp length in force, two counters for monitoring, the
-- adaptive policy's two (see _rules.lua), and the policy the domain runs
-- (chosen by the process that created it, so that one domain has one loop
-- whatever mix of configurations a fleet runs while it switches).
-- aimd_redis/schema.py holds the same list (a test compares them).
local FIELD_NAMES = {
  'current_limit', 'in_flight', 'blocked_until', 'success_streak', 'waiters', 'rate_limit_ceiling',
  'consecutive_429s', 'rampup_started_at', 'rampup_active',
  'ceiling_confirmed_at', 'rampup_seconds', 'total_429s', 'total_reclaimed', 'probe_after', 'increase_step',
  'policy',
}
local FIELD_KINDS = {
  'pos', 'count', 'time', 'count', 'count', 'count', 'count', 'time', 'flag',
  'time', 'time', 'count', 'count', 'count', 'count', 'policy',
}
-- Fields an older release did not write, and what they count as when missing.
local FIELD_DEFAULTS = {probe_after = 0, increase_step = 0, policy = 'classic'}
-- Beyond these a value is a mistake, not a measurement: times past the year
-- 5000, counts no fleet reaches.
local MAX_TIME, MAX_COUNT = 1e11, 1e15

-- Plain decimal text: whole numbers exactly, others to 14 significant digits
-- (0.1 ms for times since the epoch), never in exponent form.
local function fmt(x)
  if x % 1 == 0 and x > -1e15 and x < 1e15 then return string.format('%d', x) end
  if (x >= 1e-4 and x < 1e14) or (x <= -1e-4 and x > -1e14) then return tostring(x) end
  local s = string.gsub(string.format('%.6f', x), '0+$', '')
  return (string.gsub(s, '%.$', ''))
end

-- The number a field's text holds and whether the text is plain (as the
-- scripts write it: rewritten plain when it is saved if not); nil and the
-- error when the scripts cannot use it. Other decimal spellings ('5.0', ' 5',
-- '1e1') are accepted; hex, inf, nan and absurd magnitudes are not.
local function parse(key, name, text, kind)
  if kind == 'policy' then
    if text == 'classic' or text == 'adaptive' then return text, true end
    return nil, 'AIMD_CORRUPT ' .. key .. ' field ' .. name .. ' holds ' ..
      (text == nil and '(nothing)' or ('"' .. text .. '"'))
  end
  local v = text and tonumber(text)
  if v then
    local plain = string.find(text, kind == 'time' and '^%d+%.?%d*$' or '^%d+$') ~= nil
    if plain or string.find(text, '^%s*[%d.]+[eE]?[+-]?%d*%s*$') then
      if kind == 'time' then
        if v >= 0 and v <= MAX_TIME then return v, plain end
      elseif v % 1 == 0 and v >= (kind == 'pos' and 1 or 0) and v <= (kind == 'flag' and 1 or MAX_COUNT) then
        return v, plain
      end
    end
  end
  return nil, 'AIMD_CORRUPT ' .. key .. ' field ' .. name .. ' holds ' ..
    (text == nil and '(nothing)' or ('"' .. text .. '"'))
end

-- Idle expiry: a model nobody touches for idle_ms disappears from Redis.
local function expire_new(idle_ms, key)
  if idle_ms > 0 then redis.call('PEXPIRE', key, idle_ms) end
end

-- Seconds: the caller's injected value, else the server's clock (one clock
-- for the whole fleet, whatever the pods' own clocks say).
local function clock(arg)
  if arg ~= '' then return tonumber(arg) end
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

-- The model's effective max, for scripts that refuse an unregistered model.
local function registered_max(cap_key)
  local raw = redis.call('HGET', cap_key, 'effective_max')
  if not raw then return nil, 'AIMD_NOT_REGISTERED ' .. cap_key end
  local v, err = parse(cap_key, 'effective_max', raw, 'pos')
  if not v then return nil, err end
  return v
end

-- The numeric fields (all but the policy) as the scripts write them, joined
-- by commas: one match instead of one per field on the common path.
local PLAIN_FIELDS = '^%d+,%d+,%d+%.?%d*,%d+,%d+,%d+,%d+,%d+%.?%d*,%d+,%d+%.?%d*,%d+%.?%d*,' ..
  '%d+,%d+,%d+,%d+$'

-- The domain as the scripts wrote it, or nil when anything is missing,
-- spelled otherwise or out of range (load_domain then judges field by field).
-- Built by one table constructor each: a table filled key by key is resized
-- over and over, and that is most of the cost of a call.
local function load_plain(raw)
  local policy = raw[16]
  if policy ~= 'classic' and policy ~= 'adaptive' then return nil end
  local ok, joined = pcall(table.concat, raw, ',', 1, 15)
  if not ok or not string.find(joined, PLAIN_FIELDS) then return nil end
  local read = {
    tonumber(raw[1]), tonumber(raw[2]), tonumber(raw[3]), tonumber(raw[4]), tonumber(raw[5]),
    tonumber(raw[6]), tonumber(raw[7]), tonumber(raw[8]), tonumber(raw[9]), tonumber(raw[10]),
    tonumber(raw[11]), tonumber(raw[12]), tonumber(raw[13]), tonumber(raw[14]), tonumber(raw[15]), policy,
  }
  -- The pattern has made every number whole or decimal and not negative.
  if read[1] < 1 or read[9] > 1 or read[3] > MAX_TIME or read[8] > MAX_TIME or read[10] > MAX_TIME
    or read[11] > MAX_TIME or math.max(read[1], read[2], read[4], read[5], read[6], read[7], read[12],
    read[13], read[14], read[15]) > MAX_COUNT then return nil end
  return {
    current_limit = read[1], in_flight = read[2], blocked_until = read[3], success_streak = read[4],
    waiters = read[5], rate_limit_ceiling = read[6], consecutive_429s = read[7], rampup_started_at = read[8],
    rampup_active = read[9], ceiling_confirmed_at = read[10], rampup_seconds = read[11], total_429s = read[12],
    total_reclaimed = read[13], probe_after = read[14], increase_step = read[15], policy = policy,
    raw = raw, read = read,
  }
end

-- The domain as a table of numbers, or nil if it does not exist. d.raw keeps
-- the strings as read, so that saving and replying touch only what changed.
local function load_domain(key)
  local raw = redis.call('HMGET', key, unpack(FIELD_NAMES))
  local d = load_plain(raw)
  if d then return d end
  local read = {}
  d = {raw = raw, read = read}
  local present, missing = false, false
  for i = 1, #FIELD_NAMES do
    local text = raw[i]
    if text then
      present = true
      -- The plain whole numbers the scripts write take this short cut; times
      -- and anything else go through parse.
      local v = FIELD_KINDS[i] == 'count' and string.find(text, '^%d+$') and tonumber(text)
      if not v or v > MAX_COUNT then
        local plain
        v, plain = parse(key, FIELD_NAMES[i], text, FIELD_KINDS[i])
        if not v then return nil, plain end
        if not plain then raw[i] = false end
      end
      d[FIELD_NAMES[i]], read[i] = v, v
    else
      missing = true
    end
  end
  if not present then return nil end
  if missing then
    for i = 1, #FIELD_NAMES do
      local name = FIELD_NAMES[i]
      if d[name] == nil then
        if FIELD_DEFAULTS[name] == nil then return nil, (select(2, parse(key, name, nil, FIELD_KINDS[i]))) end
        d[name] = FIELD_DEFAULTS[name]
      end
    end
  end
  return d
end

local function new_domain(now, emax, rampup_seconds, policy)
  local ramp = rampup_seconds > 0 and emax > 1
  return {
    current_limit = ramp and 1 or emax, in_flight = 0, blocked_until = 0,
    success_streak = 0, waiters = 0, rate_limit_ceiling = 0, consecutive_429s = 0,
    rampup_started_at = now, rampup_active = ramp and 1 or 0, ceiling_confirmed_at = 0,
    rampup_seconds = rampup_seconds, total_429s = 0, total_reclaimed = 0,
    probe_after = 0, increase_step = 0, policy = policy, raw = {}, read = {},
  }
end

-- Writes the fields whose value changed since they were read (and any the
-- scripts would spell otherwise).
local function save_domain(key, d)
  local flat, n, raw, read = {}, 0, d.raw, d.read
  for i = 1, #FIELD_NAMES do
    local name = FIELD_NAMES[i]
    local v = d[name]
    if not raw[i] or read[i] ~= v then
      local text = FIELD_KINDS[i] == 'policy' and v or fmt(v)
      raw[i] = text
      flat[n + 1], flat[n + 2] = name, text
      n = n + 2
    end
  end
  if n > 0 then redis.call('HSET', key, unpack(flat)) end
end

-- The public state, its nine values in FIELD_NAMES order joined by commas
-- (call after saving): what replies and wake-ups carry.
local function state_text(d)
  local raw = d.raw
  return raw[1] .. ',' .. raw[2] .. ',' .. raw[3] .. ',' .. raw[4] .. ',' .. raw[5] .. ',' .. raw[6] ..
    ',' .. raw[7] .. ',' .. raw[8] .. ',' .. raw[9]
end

-- Events are collected while a script runs and written at its end, so that
-- nothing is written before validation has passed.
local events = {}
local function emit(domain, event, from, to)
  events[#events + 1] = {domain, event, fmt(from), fmt(to)}
end

local function flush_events(stream_key, now, maxlen, idle_ms)
  local flat = {}
  for _, e in ipairs(events) do
    redis.call('XADD', stream_key, 'MAXLEN', '~', maxlen, '*',
      'domain', e[1], 'event', e[2], 'from', e[3], 'to', e[4], 'at', fmt(now))
    flat[#flat + 1] = e[1]
    flat[#flat + 1] = e[2]
    flat[#flat + 1] = e[3]
    flat[#flat + 1] = e[4]
  end
  if #events > 0 then expire_new(idle_ms, stream_key) end
  return flat
end

-- The live leases: all but the tombstones, whose negative scores sort first.
-- Counted so, not with ZCOUNT 0 +inf: a small sorted set is a flat list in
-- Redis, and that ZCOUNT walks every lease (7 us at 64) where this stops at
-- the first live one.
local function live_leases(leases_key)
  return redis.call('ZCARD', leases_key) - redis.call('ZCOUNT', leases_key, '-inf', '(0')
end

-- Grants lease id until expiry_text, counts it in d.in_flight and takes its
-- share of the model's budget b (if any); false when the id's tombstone was
-- there (its acquire was given up before it ran), which has then done its
-- job and goes.
local function take_lease(d, leases_key, id, expiry_text, idle_ms, b)
  if redis.call('ZADD', leases_key, 'NX', expiry_text, id) == 1 then
    if d.in_flight == 0 then expire_new(idle_ms, leases_key) end
    d.in_flight = d.in_flight + 1
    budget.take(b, id)
    return true
  end
  redis.call('ZREM', leases_key, id)
  return false
end

-- Drops leases whose holders stopped renewing them; their slots come back.
local function reap(domain, d, leases_key, now)
  local n = redis.call('ZREMRANGEBYSCORE', leases_key, 0, now)
  if n > 0 then
    emit(domain, 'reclaimed', n, 0)
    d.total_reclaimed = d.total_reclaimed + n
  end
end

-- Idle expiry: every key gets its expiry when a script creates it (see
-- expire_new); all of them are pushed back together once the probe key (the
-- domain hash) has aged by a tenth of idle_ms, so a steady stream of calls
-- costs one PTTL, not a PEXPIRE per key.
local function touch(idle_ms, probe, ...)
  if idle_ms <= 0 then return end
  local left = redis.call('PTTL', probe)
  if left >= 0 and left > idle_ms - idle_ms / 10 then return end
  redis.call('PEXPIRE', probe, idle_ms)
  for _, key in ipairs({...}) do redis.call('PEXPIRE', key, idle_ms) end
end

-- The wait queue of a domain: waiters in arrival order across every process.
-- A waiter id is '<client>.<token>': <client> names the process's wake channel
-- (channel prefix .. <client>), and the id doubles as the lease id the waiter
-- gets when a slot is handed to it.
-- A slot handed to a waiter lasts claim_ttl seconds until the waiter claims
-- it (re-checking, or renewing it once woken): a waiter that died in the
-- queue does not keep it for a whole lease ttl.
local function queue_of(queue_key, beats_key, tickets_key, leases_key, channel_prefix, publish, idle_ms, claim_ttl)
  return {queue = queue_key, beats = beats_key, tickets = tickets_key, leases = leases_key,
          prefix = channel_prefix, publish = publish, idle_ms = idle_ms, claim_ttl = claim_ttl, handed = {}}
end

local function enqueue(q, id, beat_deadline)
  local ticket = redis.call('INCR', q.tickets)
  if ticket == 1 then expire_new(q.idle_ms, q.tickets) end
  redis.call('ZADD', q.queue, 'NX', ticket, id)
  redis.call('ZADD', q.beats, beat_deadline, id)
  expire_new(q.idle_ms, q.queue)
  expire_new(q.idle_ms, q.beats)
end

local function leave(q, id)
  redis.call('ZREM', q.queue, id)
  redis.call('ZREM', q.beats, id)
end

-- Drops waiters whose process stopped beating (at most 100 a call).
local function reap_waiters(q, now)
  local dead = redis.call('ZRANGEBYSCORE', q.beats, '-inf', now, 'LIMIT', 0, 100)
  if #dead > 0 then
    redis.call('ZREM', q.queue, unpack(dead))
    redis.call('ZREM', q.beats, unpack(dead))
  end
end

-- Hands free slots to the longest waiting live waiters, in order. Returns
-- whether self_id (the caller, alive: its lease lasts lease_ttl) was among
-- them, and the expiry of the others' leases (until claimed), who are told
-- by publish_handoffs.
local function promote(q, d, now, lease_ttl, self_id)
  local got_self = false
  local full, claim = fmt(now + lease_ttl), fmt(now + q.claim_ttl)
  for _ = 1, 1000 do
    if d.in_flight >= d.current_limit or now < d.blocked_until then break end
    local head = redis.call('ZRANGE', q.queue, 0, 0)[1]
    if not head then break end
    local beat = redis.call('ZSCORE', q.beats, head)
    local alive, fits = beat and tonumber(beat) > now, budget.fits(q.budget, head)
    -- The first in line waits for the budget (claiming it), and everyone behind it.
    if alive and fits and budget.wait(q.budget, head) > 0 then
      budget.claim(q.budget, head, tonumber(beat))
      break
    end
    leave(q, head)
    if alive and not fits then
      -- The budget shrank under it: dropped, and its re-check is refused.
    elseif alive and redis.call('ZADD', q.leases, 'NX', head == self_id and full or claim, head) == 1 then
      if d.in_flight == 0 then expire_new(q.idle_ms, q.leases) end
      d.in_flight = d.in_flight + 1
      budget.take(q.budget, head)
      if head == self_id then got_self = true else q.handed[#q.handed + 1] = head end
    elseif beat then
      redis.call('ZREM', q.leases, head)  -- a tombstone: that waiter gave up already
    end
  end
  return got_self, claim
end

-- How long the first waiter in line should sleep before asking again: until
-- the cooldown ends, or until the earliest lease expires (a dead holder's slot
-- comes back then, and no release will announce it). 0 for everyone else.
local function first_in_line_wait(q, d, id, now)
  if redis.call('ZRANK', q.queue, id) ~= 0 then return 0 end
  if now < d.blocked_until then return d.blocked_until - now end
  local short = budget.wait(q.budget, id)
  if short > 0 then
    local beat = redis.call('ZSCORE', q.beats, id)
    if beat then budget.claim(q.budget, id, tonumber(beat)) end
    return short
  end
  local first = redis.call('ZRANGEBYSCORE', q.leases, '(0', '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
  if first[2] then return math.max(0.001, tonumber(first[2]) - now) end
  return 0
end

-- A wake-up is a courtesy: a waiter that misses one finds its slot when it
-- re-checks. pcall, so that a refused publish (no SPUBLISH before Redis 7,
-- an ACL without the channel) never fails a script whose writes are done.
local function wake(q, client, message)
  redis.pcall(q.publish, q.prefix .. client, message)
end

-- While a cooldown blocks the queue, tells the first waiter when it ends
-- ('<id> wait <seconds>'): its next request then hands out the free slots.
local function notify_head_of_cooldown(q, d, now)
  if now >= d.blocked_until then return end
  local head = redis.call('ZRANGE', q.queue, 0, 0)[1]
  if head then
    local client = string.match(head, '^(.-)%.') or head
    wake(q, client, head .. ' wait ' .. fmt(d.blocked_until - now))
  end
end

-- Wakes the waiters promote handed a slot to: '<id> <expiry> <state values>'.
local function publish_handoffs(q, d, expiry)
  if #q.handed == 0 then return end
  local state = state_text(d)
  for _, id in ipairs(q.handed) do
    local client = string.match(id, '^(.-)%.') or id
    wake(q, client, id .. ' ' .. expiry .. ' ' .. state)
  end
end
