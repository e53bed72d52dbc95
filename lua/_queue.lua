-- The wait queue of a domain: waiters in arrival order across every process.
-- A waiter id is '<client>.<token>': <client> names the process's wake channel
-- (the model's wake prefix .. <client>), and the id doubles as the lease id
-- the waiter gets when a slot is handed to it.
-- A slot handed to a waiter lasts claim_ttl seconds until the waiter claims
-- it (re-checking, or renewing it once woken): a waiter that died in the
-- queue does not keep it for a whole lease ttl.

-- The model's wake channels are named after its cap key: '<ns>:{<p>/<m>}:wake:<client>'.
local function queue_of(k, publish, idle_ms, claim_ttl, b)
  return {k = k, prefix = string.sub(k.cap, 1, -4) .. 'wake:', publish = publish, idle_ms = idle_ms,
          claim_ttl = claim_ttl, budget = b, handed = {}}
end

local function enqueue(q, id, tokens, beat_deadline)
  local k = q.k
  local ticket = redis.call('INCR', k.tickets)
  if ticket == 1 then expire_new(q.idle_ms, k.tickets) end
  redis.call('ZADD', k.queue, 'NX', ticket, id)
  redis.call('ZADD', k.beats, beat_deadline, id)
  expire_new(q.idle_ms, k.queue)
  expire_new(q.idle_ms, k.beats)
  -- A waiter's estimate is kept even while no token budget is in force: one
  -- may be registered, or heard from the provider's headers, before its turn
  -- comes (promote then takes it; without one, promote drops it).
  if tokens > 0 or (q.budget and q.budget.tpm) then
    if redis.call('HSET', k.tokens, id, tokens) == 1 and redis.call('HLEN', k.tokens) == 1 then
      expire_new(q.idle_ms, k.tokens)
    end
  end
end

-- Drops the reservations of waiters that left, whatever the budget.
local function forget_waiters(q, ids)
  if #ids > 0 then redis.call('HDEL', q.k.tokens, unpack(ids)) end
end

-- Whether id was queued.
local function leave(q, id)
  redis.call('ZREM', q.k.beats, id)
  return redis.call('ZREM', q.k.queue, id) == 1
end

-- Drops waiters whose process stopped beating (at most 100 a call).
local function reap_waiters(q, now)
  local k = q.k
  local dead = redis.call('ZRANGEBYSCORE', k.beats, '-inf', now, 'LIMIT', 0, 100)
  if #dead > 0 then
    redis.call('ZREM', k.queue, unpack(dead))
    redis.call('ZREM', k.beats, unpack(dead))
    forget_waiters(q, dead)
  end
end

-- Hands free slots to the longest waiting live waiters, in order. Returns
-- whether self_id (the caller, alive: its lease lasts lease_ttl) was among
-- them, and the expiry of the others' leases (until claimed), who are told
-- by publish_handoffs.
local function promote(q, d, now, lease_ttl, self_id)
  local k, b = q.k, q.budget
  local got_self = false
  local full, claim = fmt(now + lease_ttl), fmt(now + q.claim_ttl)
  for _ = 1, 1000 do
    if d.in_flight >= d.current_limit or now < d.blocked_until then break end
    local head = redis.call('ZRANGE', k.queue, 0, 0)[1]
    if not head then break end
    local beat = redis.call('ZSCORE', k.beats, head)
    local tokens = tonumber(redis.call('HGET', k.tokens, head)) or 0
    local alive, fits = beat and tonumber(beat) > now, budget.fits(b, tokens)
    -- The first in line waits for the budget (claiming it), and everyone behind it.
    if alive and fits and budget.wait(b, head, tokens) > 0 then
      budget.claim(b, head, tokens, tonumber(beat))
      break
    end
    leave(q, head)
    if alive and fits and grant(d, k, head, tokens, head == self_id and full or claim, q.idle_ms, b) then
      if head == self_id then got_self = true else q.handed[#q.handed + 1] = head end
      -- A lease granted without a token budget has nothing to settle.
      if not (b and b.tpm) and tokens > 0 then forget_waiters(q, {head}) end
    else
      -- Dead, gave up already (its tombstone went), or the budget shrank
      -- under it (its re-check is refused): dropped.
      if beat and not alive then redis.call('ZREM', k.leases, head) end
      forget_waiters(q, {head})
    end
  end
  return got_self, claim
end

-- How long the first waiter in line should sleep before asking again: until
-- the cooldown ends, or until the earliest lease expires (a dead holder's slot
-- comes back then, and no release will announce it). 0 for everyone else.
local function first_in_line_wait(q, d, id, tokens, now)
  local k = q.k
  if redis.call('ZRANK', k.queue, id) ~= 0 then return 0 end
  if now < d.blocked_until then return d.blocked_until - now end
  local short = budget.wait(q.budget, id, tokens)
  if short > 0 then
    local beat = redis.call('ZSCORE', k.beats, id)
    if beat then budget.claim(q.budget, id, tokens, tonumber(beat)) end
    return short
  end
  local first = redis.call('ZRANGEBYSCORE', k.leases, '(0', '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
  if first[2] then return math.max(0.001, tonumber(first[2]) - now) end
  return 0
end

-- A wake-up is a courtesy: a waiter that misses one finds its slot when it
-- re-checks. pcall, so that a refused publish (no SPUBLISH before Redis 7,
-- an ACL without the channel) never fails a script whose writes are done.
-- The message: '<waiter id> <JSON>'.
local function wake(q, id, json)
  local client = string.match(id, '^(.-)%.') or id
  redis.pcall(q.publish, q.prefix .. client, id .. ' ' .. json)
end

-- While a cooldown blocks the queue, tells the first waiter when it ends: its
-- next request then hands out the free slots.
local function notify_head_of_cooldown(q, d, now)
  if now >= d.blocked_until then return end
  local head = redis.call('ZRANGE', q.k.queue, 0, 0)[1]
  if head then wake(q, head, '{"wait":' .. fmt(d.blocked_until - now) .. '}') end
end

-- Wakes the waiters promote handed a slot to.
local function publish_handoffs(q, d, expiry)
  if #q.handed == 0 then return end
  local json = '{"expires_at":' .. expiry .. ',"state":' .. state_json(d) .. '}'
  for _, id in ipairs(q.handed) do wake(q, id, json) end
end
