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
-- KEYS[9] budget hash    <ns>:{<provider>/<model>}:cap:budget (see _budget.lua)
--
-- ARGV[1]  now               seconds, or '' for the server's TIME
-- ARGV[2]  domain            the domain's name
-- ARGV[3]  lease_id          the lease to give back
-- ARGV[4]  outcome           'success', 'rate_limited', 'failure', or 'abandon': the
--                            caller gave up on an acquire whose reply it never saw.
--                            Frees the slot if the acquire granted it; if the acquire
--                            has not run yet (it may arrive later on another
--                            connection), leaves a tombstone (score -expiry in the
--                            leases zset) that makes it grant nothing. Changes
--                            nothing else.
-- ARGV[5]  cooldown          seconds a 429 blocks for (the caller resolves Retry-After)
-- ARGV[6]  reduce_factor
-- ARGV[7]  additive_increase
-- ARGV[8]  success_window
-- ARGV[9]  ceiling_overshoot
-- ARGV[10] rampup_seconds
-- ARGV[11] ceiling_ttl       seconds (0: never forget)
-- ARGV[12] idle_ms           idle expiry in milliseconds (0: never expire)
-- ARGV[13] events_maxlen     the event stream's approximate MAXLEN
-- ARGV[14] lease_ttl         seconds a tombstone is kept, and new leases last
-- ARGV[15] wake_prefix       <ns>:{<provider>/<model>}:wake:
-- ARGV[16] publish           'PUBLISH', or 'SPUBLISH' on a cluster
-- ARGV[17] claim_ttl         seconds a slot handed to a waiter lasts until claimed
-- ARGV[18] granted_at        when the lease was granted (Redis clock), as the caller
--                            heard it; '' when unknown (the lease's expiry less
--                            lease_ttl serves, unless a renewal moved it)
-- ARGV[19] next_id           a new lease id to take the next slot with, in the same
--                            call (a worker's loop: one round trip per request), or ''
-- ARGV[20] tokens            tokens the request used (a success), or '' for what the
--                            lease reserved (its id's '.t<n>')
-- ARGV[21] heard_rpm         the provider's limits and what it said is left, from
-- ARGV[22] heard_tpm         the response's headers; '' for what it did not say
-- ARGV[23] heard_requests
-- ARGV[24] heard_tokens
--
-- A slot given back goes to the longest waiting live waiter, who is woken on
-- its process's channel; during a cooldown the first waiter is told when it
-- ends instead. The next slot (next_id) is taken as a 'try' acquire would:
-- only when nobody waits, outside a cooldown, under the limit and the budget.
--
-- The reservation of a released lease is settled, and the heard limits and
-- what the provider says is left are applied, as _budget.lua's
-- budget.settle and budget.heard_limits say.
--
-- Reply: {released, state, events, registered, next}
--   released 1 when this call gave the slot back; 0 when the lease was already
--            released or had expired (the outcome is then ignored)
--   state    the domain's nine public fields, in order, joined by commas
--            ('' if the domain no longer exists)
--   events   flat list of (domain, event, from, to) quadruples
--   registered 0 when the model's registration was missing (the caller should
--            register again), else 1
--   next     the next lease's expiry when next_id was granted, else ''
-- Errors: 'AIMD_CORRUPT <key> field <name> holds <value>'

local now = clock(ARGV[1])
local domain, lease_id, outcome = ARGV[2], ARGV[3], ARGV[4]
local cooldown = tonumber(ARGV[5])
local cfg = {
  reduce_factor = tonumber(ARGV[6]), additive_increase = tonumber(ARGV[7]),
  success_window = tonumber(ARGV[8]), ceiling_overshoot = tonumber(ARGV[9]),
  rampup_seconds = tonumber(ARGV[10]), ceiling_ttl = tonumber(ARGV[11]), lease_ttl = tonumber(ARGV[14]),
}
local idle_ms, events_maxlen = tonumber(ARGV[12]), ARGV[13]
local wake_prefix, publish, claim_ttl = ARGV[15], ARGV[16], tonumber(ARGV[17])
local granted_when = tonumber(ARGV[18])
local next_id, used = ARGV[19], tonumber(ARGV[20])
local heard = {rpm = tonumber(ARGV[21]), tpm = tonumber(ARGV[22])}
for name, v in pairs(heard) do  -- a limit below 1 (or not whole) says nothing usable
  if v ~= v or v < 1 or v % 1 ~= 0 or v > MAX_COUNT then heard[name] = nil end
end
local heard_requests, heard_tokens = tonumber(ARGV[23]), tonumber(ARGV[24])

local learning = heard.rpm or heard.tpm

local cap, err = budget.read_cap(KEYS[1], learning)
if err then return redis.error_reply(err) end
local emax = cap.effective_max
local registered = emax ~= nil
local b
b, err = budget.load(cap, KEYS[9], now, learning)
if err then return redis.error_reply(err) end

local d
d, err = load_domain(KEYS[2])
if err then return redis.error_reply(err) end

-- A budget learned belongs with a registration.
if registered and learning then budget.heard_limits(KEYS[1], cap, heard) end
b = budget.limits(b, cap, now)

local q = queue_of(KEYS[6], KEYS[7], KEYS[8], KEYS[3], wake_prefix, publish, idle_ms, claim_ttl)
q.budget = b
local released, granted_at = 0, nil
if d then reap(domain, d, KEYS[3], now) end
-- The lease's score is its expiry (a live lease), or minus the expiry of a
-- tombstone. A live lease is freed even when the domain hash is gone
-- (evicted, deleted): left in the zset, it would hold a slot of the domain
-- acquire re-creates.
local score = tonumber(redis.call('ZSCORE', KEYS[3], lease_id))
if score and score > 0 then
  released = redis.call('ZREM', KEYS[3], lease_id)
  granted_at = granted_when or score - cfg.lease_ttl
end
if outcome == 'abandon' then
  leave(q, lease_id)
  budget.unclaim(b, lease_id)  -- a waiter that gave up claims nothing more
  if not score then  -- the acquire has not run: it must grant nothing when it does
    redis.call('ZREMRANGEBYSCORE', KEYS[3], fmt(-now), '(0')  -- expired tombstones
    redis.call('ZADD', KEYS[3], fmt(-(now + cfg.lease_ttl)), lease_id)
    expire_new(idle_ms, KEYS[3])
  end
end
budget.settle(domain, b, released == 1, outcome, lease_id, used, heard_requests, heard_tokens)
if not d then
  budget.save(b, idle_ms)
  return {released, '', flush_events(KEYS[5], now, events_maxlen, idle_ms), registered and 1 or 0, ''}
end
-- A registration Redis lost (deleted, evicted) is unknown, not 1: the limit
-- stays where it is, and only a 429 moves it (down), until the client that
-- reads this reply registers again.
if not registered then emax = d.current_limit end

d.in_flight = live_leases(KEYS[3])
rules.refresh(domain, d, now, emax, cfg.ceiling_ttl)

if released == 1 and outcome ~= 'abandon' and (registered or outcome == 'rate_limited') then
  local policy = rules[d.policy]  -- the domain's own, whatever the caller runs
  -- What the rules learn of the request: sent after the last cut, and sent
  -- while every slot was taken.
  local fresh = granted_at >= d.ceiling_confirmed_at
  local saturated = d.in_flight + 1 >= d.current_limit
  if outcome == 'success' then
    policy.on_success(domain, d, now, emax, cfg, fresh, saturated)
  elseif outcome == 'rate_limited' then
    policy.on_rate_limited(domain, d, now, emax, cfg, cooldown, fresh, saturated)
    d.total_429s = d.total_429s + 1
  elseif outcome == 'failure' then
    policy.on_failure(domain, d, now, emax, cfg, fresh, saturated)
  end
end

local handoff_expiry
local queued = redis.call('ZCARD', q.queue)
if queued > 0 then
  reap_waiters(q, now)
  local _, expiry = promote(q, d, now, cfg.lease_ttl, nil)
  handoff_expiry = expiry
  queued = redis.call('ZCARD', q.queue)
end
d.waiters = queued

local next_expiry = ''
if next_id ~= '' and registered and queued == 0 and now >= d.blocked_until then
  rules.ramp(domain, d, now, emax, cfg.rampup_seconds)
  local expiry = fmt(now + cfg.lease_ttl)
  if d.in_flight < d.current_limit and budget.fits(b, next_id) and budget.wait(b, next_id) == 0
      and take_lease(d, KEYS[3], next_id, expiry, idle_ms, b) then
    next_expiry = expiry
  end
end
save_domain(KEYS[2], d)
budget.save(b, idle_ms)
if handoff_expiry then
  publish_handoffs(q, d, handoff_expiry)
  notify_head_of_cooldown(q, d, now)
end
local flat_events = flush_events(KEYS[5], now, events_maxlen, idle_ms)
touch(idle_ms, KEYS[2], KEYS[1], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], b and KEYS[9])
return {released, state_text(d), flat_events, registered and 1 or 0, next_expiry}
