-- release: give a lease back and report how the request went.
--
-- KEYS[1] cap hash       <ns>:{<provider>/<model>}:cap
-- KEYS[2] domain hash    <ns>:{<provider>/<model>}:<domain>
-- KEYS[3] leases zset    <ns>:{<provider>/<model>}:<domain>:leases
-- KEYS[4] domain index   <ns>:{<provider>/<model>}:domains
-- KEYS[5] event stream   <ns>:{<provider>/<model>}:events
-- KEYS[6] queue zset     <ns>:{<provider>/<model>}:<domain>:queue
-- KEYS[7] beats zset     <ns>:{<provider>/<model>}:<domain>:beats
-- KEYS[8] ticket counter <ns>:{<provider>/<model>}:<domain>:tickets
--
-- ARGV[1]  now in seconds, or '' for the server's TIME
-- ARGV[2]  domain name
-- ARGV[3]  lease id
-- ARGV[4]  outcome: 'success', 'rate_limited', 'failure', or 'abandon': the
--          caller gave up on an acquire whose reply it never saw. Frees the
--          slot if the acquire granted it; if the acquire has not run yet
--          (it may arrive later on another connection), leaves a tombstone
--          (score -expiry in the leases zset) that makes it grant nothing.
--          Changes nothing else.
-- ARGV[5]  cooldown for a 429 in seconds (the caller resolves Retry-After)
-- ARGV[6]  reduce_factor
-- ARGV[7]  additive_increase
-- ARGV[8]  success_window
-- ARGV[9]  ceiling_overshoot
-- ARGV[10] rampup_seconds
-- ARGV[11] ceiling_ttl_seconds (0: never forget)
-- ARGV[12] idle ttl in milliseconds (0: never expire)
-- ARGV[13] event stream MAXLEN (approximate)
-- ARGV[14] lease_ttl_seconds (how long a tombstone is kept, and new leases last)
-- ARGV[15] wake channel prefix (<ns>:{<provider>/<model>}:wake:)
-- ARGV[16] publish command: 'PUBLISH', or 'SPUBLISH' on a cluster
--
-- A slot given back goes to the longest waiting live waiter, who is woken on
-- its process's channel; during a cooldown the first waiter is told when it
-- ends instead.
--
-- Reply: {released, state, events}
--   released 1 when this call gave the slot back; 0 when the lease was already
--            released or had expired (the outcome is then ignored)
--   state    the domain's fields as a flat name/value list (empty if the
--            domain no longer exists)
--   events   flat list of (domain, event, from, to) quadruples
-- Errors: 'AIMD_CORRUPT <key> field <name> holds <value>'

local now = clock(ARGV[1])
local domain = ARGV[2]
local outcome = ARGV[4]
local idle_ms = tonumber(ARGV[12])

local emax, err = read_max(KEYS[1])
if err then return redis.error_reply(err) end
-- A model whose registration vanished (deleted by hand) counts as max 1.
emax = emax or 1

local d
d, err = load_domain(KEYS[2])
if err then return redis.error_reply(err) end

local q = queue_of(KEYS[6], KEYS[7], KEYS[8], KEYS[3], ARGV[15], ARGV[16], idle_ms)
local released = 0
if d then reap(domain, d, KEYS[3], now) end
if outcome == 'abandon' then
  leave(q, ARGV[3])
  local score = redis.call('ZSCORE', KEYS[3], ARGV[3])
  if score and tonumber(score) > 0 then
    released = redis.call('ZREM', KEYS[3], ARGV[3])
  elseif not score then
    redis.call('ZREMRANGEBYSCORE', KEYS[3], fmt(-now), '(0')  -- expired tombstones
    redis.call('ZADD', KEYS[3], fmt(-(now + tonumber(ARGV[14]))), ARGV[3])
    expire_new(idle_ms, KEYS[3])
  end
elseif d then
  released = redis.call('ZREM', KEYS[3], ARGV[3])
end
if not d then return {0, {}, {}} end

d.in_flight = redis.call('ZCOUNT', KEYS[3], 0, '+inf')
refresh(domain, d, now, emax, tonumber(ARGV[11]))

if released == 1 then
  if outcome == 'success' then
    d.consecutive_429s = 0
    ramp(domain, d, now, emax, tonumber(ARGV[10]))
    if d.rampup_active == 1 then
      d.success_streak = 0
    else
      d.success_streak = d.success_streak + 1
      if d.success_streak >= tonumber(ARGV[8]) then
        local cap = emax
        local ceiling = d.rate_limit_ceiling
        if ceiling > 0 then
          cap = math.min(emax, ceiling + math.max(1, math.floor(ceiling * tonumber(ARGV[9]))))
        end
        if d.current_limit < cap then
          local before = d.current_limit
          d.current_limit = math.min(cap, d.current_limit + tonumber(ARGV[7]))
          emit(domain, 'increase', before, d.current_limit)
        end
        d.success_streak = 0
      end
    end
  elseif outcome == 'rate_limited' then
    if d.rampup_active == 1 then
      d.rampup_active = 0
      emit(domain, 'ramp_stopped', d.current_limit, d.current_limit)
    end
    d.blocked_until = now + tonumber(ARGV[5])
    emit(domain, 'cooldown', now, d.blocked_until)
    d.success_streak = 0
    if d.consecutive_429s == 0 then
      local before = d.current_limit
      d.current_limit = math.max(1, math.floor(before * tonumber(ARGV[6])))
      if d.current_limit < before then
        emit(domain, 'decrease', before, d.current_limit)
        local ceiling = before
        if d.rate_limit_ceiling > 0 then ceiling = math.min(d.rate_limit_ceiling, before) end
        if ceiling ~= d.rate_limit_ceiling then
          emit(domain, 'ceiling', d.rate_limit_ceiling, ceiling)
          d.rate_limit_ceiling = ceiling
        end
      end
    end
    -- Any 429 confirms a known ceiling, which keeps it from being forgotten.
    if d.rate_limit_ceiling > 0 then d.ceiling_confirmed_at = now end
    d.consecutive_429s = d.consecutive_429s + 1
    d.total_429s = d.total_429s + 1
  elseif outcome == 'failure' then
    -- A failure ends a 429 cascade only once the burst has drained.
    if d.in_flight == 0 then d.consecutive_429s = 0 end
  end
end

local handoff_expiry
local queued = redis.call('ZCARD', q.queue)
if queued > 0 then
  reap_waiters(q, now)
  local _, expiry = promote(q, d, now, tonumber(ARGV[14]), nil)
  handoff_expiry = expiry
  queued = redis.call('ZCARD', q.queue)
end
d.waiters = queued
save_domain(KEYS[2], d)
if handoff_expiry then
  publish_handoffs(q, d, handoff_expiry)
  notify_head_of_cooldown(q, d, now)
end
local flat_events = flush_events(KEYS[5], now, ARGV[13], idle_ms)
touch(idle_ms, KEYS[2], KEYS[1], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8])
return {released, state_reply(d), flat_events}
