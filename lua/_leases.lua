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

-- Drops expired leases: their slots come back (and, with a token budget,
-- their reservations go).
local function reap(domain, d, k, now, b)
  local n
  if b then
    local gone = redis.call('ZRANGEBYSCORE', k.leases, 0, now)
    n = #gone
    if n > 0 then
      redis.call('ZREMRANGEBYSCORE', k.leases, 0, now)
      budget.forget(b, k.tokens, gone)
    end
  else
    n = redis.call('ZREMRANGEBYSCORE', k.leases, 0, now)
  end
  if n > 0 then
    emit(domain, 'reclaimed', n, 0)
    d.total_reclaimed = d.total_reclaimed + n
  end
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
    budget.take(b, id, tokens)
    return true
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
