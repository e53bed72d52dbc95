-- What one acquire or one outcome does to a loaded domain, shared by the
-- scripts that do it once (acquire.lua, release.lua) and the one that does it
-- for a whole batch of a process's callers (batch.lua).

-- A domain on its first touch, recorded in the model's index.
local function create_domain(domain, k, now, m)
  local d = new_domain(now, m)
  redis.call('SADD', k.index, domain)
  -- For the previous release while a fleet upgrades: its scripts require the
  -- field (the ramp length they ran), and would call the domain corrupt.
  redis.call('HSET', k.domain, 'rampup_seconds', fmt(m.config.rampup_seconds))
  emit(domain, d.rampup_active == 1 and 'ramp_start' or 'created', 0, d.current_limit)
  return d
end

-- A slot taken if one is free now (the caller has made sure nobody waits
-- ahead of it): the status and value of acquire.lua's reply (a grant's
-- expiry as the lease's score holds it, as text).
local function try_take(d, k, b, id, tokens, now, lease_ttl, idle_ms)
  if now < d.blocked_until then return 'cooldown', d.blocked_until - now end
  if room(d, group_of(id)) <= 0 then return 'at_capacity', 0 end
  local wait = budget.wait(b, id, tokens)
  if wait > 0 then return 'budget', wait end
  local expiry = fmt(now + lease_ttl)
  if grant(d, k, id, tokens, expiry, idle_ms, b) then
    budget.reserve(b, k.tokens, id, tokens, idle_ms)
    return 'granted', expiry
  end
  return 'abandoned', 0
end

-- Gives lease id back with its outcome (see release.lua's header for
-- 'abandon' and 'leave'), settles its reservation and tells the rules (d: the domain,
-- nil when its hash is gone; its in_flight counted from the leases since the last reap). r: {outcome, retry_after, granted_at, used,
-- requests_left, tokens_left, ttfb}. Returns whether this call released the slot.
local function give_back(domain, d, q, m, now, lease_ttl, id, r)
  local k, b = q.k, q.budget
  local sample = {retry_after = r.retry_after, ttfb = r.ttfb, tokens = r.used}
  -- The lease's score is its expiry (a live lease), or minus the expiry of a
  -- tombstone. A live lease is freed even when the domain hash is gone
  -- (evicted, deleted): left in the zset, it would hold a slot of the domain
  -- acquire re-creates.
  local score = tonumber(redis.call('ZSCORE', k.leases, id))
  sample.released = score ~= nil and score > 0
  if sample.released then
    redis.call('ZREM', k.leases, id)
    if d then count_in_group(d, k, id, -1) end
    sample.granted_at = r.granted_at or score - lease_ttl
  end
  local reserved = budget.reserved(b, k.tokens, id, true)
  local outcome = r.outcome
  if outcome == 'abandon' or outcome == 'leave' then
    if not b then forget_waiters(q, {id}) end  -- a waiter's estimate is kept without a budget too
    budget.unclaim(b, id)  -- a waiter that gave up claims nothing more
    unhand(q, {id})
    leave(q, id)
    -- An acquire cut off mid-call may still be on its way (another connection,
    -- a retry), a queued waiter's re-check too: unless it granted, it must
    -- grant nothing when it runs. A waiter leaving between its calls has
    -- nothing on the way and leaves no tombstone.
    if outcome == 'abandon' and not score then bury(k, id, now, lease_ttl, m.idle_ms) end
    outcome = 'abandon'
  end
  budget.settle(domain, b, sample.released, outcome, reserved, r.used, r.requests_left, r.tokens_left)
  if d then
    if sample.released then d.in_flight = d.in_flight - 1 end  -- counted by the caller after its reap
    rules.on_outcome(domain, d, now, m, outcome, sample)
  end
  return sample.released
end
