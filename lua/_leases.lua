-- Leases: a domain's granted slots, in its leases zset scored by expiry. A
-- lease whose holder stops renewing it expires, and its slot comes back.
--
-- A tombstone (score: minus its expiry) stands for an acquire that was given
-- up before it ran (its give-back reached Redis first): when the acquire does
-- run, it finds the tombstone and grants nothing.

-- The live leases: all but the tombstones, whose negative scores sort first.
-- Counted so, not with ZCOUNT 0 +inf: a small sorted set is a flat list in
-- Redis, and that ZCOUNT walks every lease (7 us at 64) where this stops at
-- the first live one.
local function live_leases(leases_key)
  return redis.call('ZCARD', leases_key) - redis.call('ZCOUNT', leases_key, '-inf', '(0')
end

-- The group a lease, waiter or queue entry counts in ('<client>~<group>...'),
-- or nil for the default group.
local function group_of(id)
  if not string.find(id, '~', 1, true) then return nil end  -- the common case, cheaply
  return string.match(id, '^[^.~]*~([%w_-]+)')
end

-- A named group's live leases are counted in the domain hash, field
-- 'in_flight:<group>' (gone at 0): status shows them, and a reservation
-- (d.reserved, see room) is judged by them (d.groups).
local function in_flight_field(g)
  return 'in_flight:' .. g
end

local function count_in_group(d, k, id, delta)
  local g = group_of(id)
  if not g then return end
  local field = in_flight_field(g)
  local n = redis.call('HINCRBY', k.domain, field, delta)
  if n <= 0 then
    redis.call('HDEL', k.domain, field)
    n = 0
  end
  if d.groups then d.groups[g] = n end
end

-- Drops expired leases (their slots come back and, with a token budget,
-- their reservations go) and counts the live ones into d.in_flight; with
-- groups reserved in the model's configuration m, also theirs into d.groups.
local function count_leases(domain, d, k, now, b, m)
  local reserved = reserved_shares(m.config.reserved)
  if reserved then
    d.reserved, d.groups = reserved, {}
    local names, fields = {}, {}
    for g in pairs(reserved) do names[#names + 1], fields[#fields + 1] = g, in_flight_field(g) end
    for i, n in ipairs(redis.call('HMGET', k.domain, unpack(fields))) do d.groups[names[i]] = tonumber(n) or 0 end
  end
  local gone = redis.call('ZRANGEBYSCORE', k.leases, 0, now)
  local n = #gone
  if n > 0 then
    redis.call('ZREMRANGEBYSCORE', k.leases, 0, now)
    budget.forget(b, k.tokens, gone)
    for _, id in ipairs(gone) do count_in_group(d, k, id, -1) end
    emit(domain, 'reclaimed', n, 0)
    d.total_reclaimed = d.total_reclaimed + n
  end
  d.in_flight = live_leases(k.leases)
  -- A count can only be wrong by hand (leases deleted): never above all
  -- the leases, and none once none is left.
  if not d.groups then return end
  for g, count in pairs(d.groups) do
    if count > d.in_flight then
      d.groups[g] = d.in_flight
      if d.in_flight == 0 then redis.call('HDEL', k.domain, in_flight_field(g)) end
    end
  end
end

-- Slots group g (nil: the default) may take now: the free ones, less those
-- other groups' reservations hold for them (a reservation's slots are its
-- group's alone, in use or not).
local function room(d, g)
  local free = d.current_limit - d.in_flight
  if d.reserved then
    for h, share in pairs(d.reserved) do
      if h ~= g then free = free - math.max(0, math.floor(share * d.current_limit) - d.groups[h]) end
    end
  end
  return free
end

-- Grants lease id until expiry_text: counts it in d.in_flight and takes its
-- request and tokens of the model's budget b (if any). False when the id's
-- tombstone was there (its acquire was given up before it ran): the
-- tombstone has then done its job and goes. The one way a slot is taken,
-- by a newcomer, a hand-over or a worker's next request alike.
local function grant(d, k, id, tokens, expiry_text, idle_ms, b)
  if redis.call('ZADD', k.leases, 'NX', expiry_text, id) == 1 then
    if d.in_flight == 0 then expire_new(idle_ms, k.leases) end
    d.in_flight = d.in_flight + 1
    count_in_group(d, k, id, 1)
    budget.take(b, id, tokens)
    return true
  end
  -- A live lease of the same id (the same call run twice, its first reply
  -- lost) goes as well: out of the counts too.
  if tonumber(redis.call('ZSCORE', k.leases, id)) > 0 then
    d.in_flight = d.in_flight - 1
    count_in_group(d, k, id, -1)
  end
  redis.call('ZREM', k.leases, id)
  return false
end

-- Marks lease id given up before its acquire ran, until the lease would
-- have expired (and drops the tombstones that have).
local function bury(k, id, now, lease_ttl, idle_ms)
  redis.call('ZREMRANGEBYSCORE', k.leases, fmt(-now), '(0')
  redis.call('ZADD', k.leases, fmt(-(now + lease_ttl)), id)
  expire_new(idle_ms, k.leases)
end
