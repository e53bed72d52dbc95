-- release: give a lease back and report how the request went.
--
-- KEYS[1..12] as acquire.lua: cap hash, domain hash, leases zset, domain index,
--             event stream, queue zset, beats zset, groups zset, want hash,
--             handed hash, budget hash, tokens hash
--
-- ARGV[1]  now               seconds, or '' for the server's TIME
-- ARGV[2]  domain            the domain's name
-- ARGV[3]  lease_id          the lease to give back
-- ARGV[4]  outcome           'success', 'rate_limited', 'failure', or 'abandon': the
--                            caller gave up on an acquire whose reply it never saw.
--                            Frees the slot if the acquire granted it; if the acquire
--                            has not run yet (it may arrive later on another
--                            connection), leaves a tombstone that makes it grant
--                            nothing. Changes nothing else. 'leave': a queued waiter
--                            giving up between its calls (none on its way): as
--                            'abandon', without the tombstone.
-- ARGV[5]  retry_after       a 429's Retry-After in seconds, or '' (the model's
--                            cooldown_seconds then; max_cooldown_seconds at most)
-- ARGV[6]  granted_at        when the lease was granted (Redis clock), as the caller
--                            heard it; '' when unknown (the lease's expiry less
--                            lease_ttl serves, unless a renewal moved it)
-- ARGV[7]  lease_ttl         seconds a tombstone is kept, and the next lease lasts
-- ARGV[8]  claim_ttl         seconds a slot handed to a waiter lasts until claimed
-- ARGV[9]  publish           'PUBLISH', or 'SPUBLISH' on a cluster
-- ARGV[10] next_id           a new lease id to take the next slot with, in the same
--                            call (a worker's loop: one round trip per request), or ''
-- ARGV[11] next_tokens       the next request's estimate of tokens
-- ARGV[12] tokens            tokens the request used (a success), or '' for what the
--                            lease reserved
-- ARGV[13] heard_rpm         the provider's limits and what it said is left, from
-- ARGV[14] heard_tpm         the response's headers; '' for what it did not say
-- ARGV[15] heard_requests
-- ARGV[16] heard_tokens
-- ARGV[17] ttfb              seconds from sending the request to its first byte (a
--                            stream's), as the caller measured it, or ''
--
-- The outcome goes to the rules of the model's stored configuration. A slot
-- given back goes to the longest waiting live waiter, who is woken on its
-- process's channel; during a cooldown the first waiter is told when it ends
-- instead. The next slot (next_id) is taken as a 'try' acquire would: only
-- when nobody waits, outside a cooldown, under the limit and the budget.
--
-- The reservation of a released lease is settled, and the heard limits and
-- what the provider says is left are applied, as _budget.lua's
-- budget.settle and budget.heard_limits say.
--
-- Reply (JSON): {released, state, events, registered, next}
--   released   true when this call gave the slot back; false when the lease was
--              already released or had expired (the outcome is then ignored)
--   state      the domain's public fields (none if the domain no longer exists)
--   events     list of [domain, event, from, to]
--   registered false when the model's registration was missing (the caller
--              should register again)
--   next       the next lease's expiry when next_id was granted, else 0
-- Errors: 'AIMD_CORRUPT <key> field <name> holds <value>'

local now = clock(ARGV[1])
local domain, lease_id, outcome = ARGV[2], ARGV[3], ARGV[4]
local retry_after = tonumber(ARGV[5])
local granted_when, lease_ttl, claim_ttl, publish = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8]), ARGV[9]
local next_id, next_tokens, used = ARGV[10], tonumber(ARGV[11]), tonumber(ARGV[12])
local heard = {rpm = tonumber(ARGV[13]), tpm = tonumber(ARGV[14])}
for name, v in pairs(heard) do  -- a limit below 1 (or not whole) says nothing usable
  if v ~= v or v < 1 or v % 1 ~= 0 or v > MAX_COUNT then heard[name] = nil end
end
local heard_requests, heard_tokens, ttfb = tonumber(ARGV[15]), tonumber(ARGV[16]), tonumber(ARGV[17])
local k = domain_keys(KEYS)

local learning = heard.rpm or heard.tpm
local m, err = load_model(k.cap, now, learning)
if err then return redis.error_reply(err) end
local registered = m.emax ~= nil
m.idle_ms = lease_floor(m.idle_ms, lease_ttl)
local b
b, err = budget.load(m, k.budget, now, learning)
if err then return redis.error_reply(err) end

local d
d, err = load_domain(k.domain)
if err then return redis.error_reply(err) end

-- A budget learned belongs with a registration.
if registered and learning then budget.heard_limits(k.cap, m, heard) end
b = budget.limits(b, m, now)

local q = queue_of(domain, k, publish, m.idle_ms, claim_ttl, b)
if d then
  count_leases(domain, d, k, now, b, m)
end
local released = give_back(domain, d, q, m, now, lease_ttl, lease_id, {
  outcome = outcome, retry_after = retry_after, granted_at = granted_when, used = used,
  requests_left = heard_requests, tokens_left = heard_tokens, ttfb = ttfb})
if not d then
  budget.save(b, m.idle_ms)
  flush_events(k.events, now, m.idle_ms)
  return '{"released":' .. tostring(released) .. ',"registered":' .. tostring(registered) .. events_json() .. '}'
end

local handoff_expiry
local queued = redis.call('ZCARD', k.queue)
if queued > 0 then
  reap_waiters(q, now)
  local _, expiry = promote(q, d, now, lease_ttl, nil)
  handoff_expiry = expiry
  queued = redis.call('ZCARD', k.queue)
end
d.waiters = waiting_count(q)

local next_expiry = '0'
if next_id ~= '' and registered and queued == 0 and now >= d.blocked_until then
  rules.on_acquire(domain, d, now, m)
  if budget.fits(b, next_tokens) then
    local status, value = try_take(d, k, b, next_id, next_tokens, now, lease_ttl, m.idle_ms)
    if status == 'granted' then next_expiry = value end
  end
end
save_domain(k.domain, d)
budget.save(b, m.idle_ms)
if handoff_expiry then
  publish_handoffs(q, d, handoff_expiry)
  notify_head_of_cooldown(q, d, now)
end
flush_events(k.events, now, m.idle_ms)
touch(m.idle_ms, k.domain, k.cap, k.leases, k.index, k.events, k.queue, k.beats, k.groups, k.want, k.handed,
  b and k.budget, b and k.tokens)
return '{"released":' .. tostring(released) .. ',"registered":' .. tostring(registered) .. ',"next":' ..
  next_expiry .. ',"state":' .. state_json(d) .. events_json() .. '}'
