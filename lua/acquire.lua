-- acquire: take one slot of a domain as a lease, or join the domain's queue.
--
-- KEYS[1]  cap hash       <ns>:{<provider>/<model>}:cap (registration and configuration)
-- KEYS[2]  domain hash    <ns>:{<provider>/<model>}:<domain>
-- KEYS[3]  leases zset    <ns>:{<provider>/<model>}:<domain>:leases
--                         lease id -> expiry; a negative score -t is the tombstone
--                         of an acquire given up before it ran (forgotten at t)
-- KEYS[4]  domain index   <ns>:{<provider>/<model>}:domains (set of domain names)
-- KEYS[5]  event stream   <ns>:{<provider>/<model>}:events
-- KEYS[6]  queue zset     <ns>:{<provider>/<model>}:<domain>:queue (waiter id -> virtual start time)
-- KEYS[7]  beats zset     <ns>:{<provider>/<model>}:<domain>:beats (waiter id -> heartbeat deadline)
-- KEYS[8]  groups zset    <ns>:{<provider>/<model>}:<domain>:groups (group -> virtual finish time)
-- KEYS[9]  want hash      <ns>:{<provider>/<model>}:<domain>:want (agent -> what it waits for)
-- KEYS[10] handed hash    <ns>:{<provider>/<model>}:<domain>:handed (agent -> slots handed, not acked)
--                         (see _queue.lua)
-- KEYS[11] budget hash    <ns>:{<provider>/<model>}:cap:budget (see _budget.lua)
-- KEYS[12] tokens hash    <ns>:{<provider>/<model>}:<domain>:tokens (lease or waiter id ->
--                         its reservation; with a token budget only)
--
-- ARGV[1]  now               seconds, or '' for the server's TIME
-- ARGV[2]  domain            the domain's name (for the index and the events)
-- ARGV[3]  lease_id          the lease to grant (for a waiter: its waiter id)
-- ARGV[4]  tokens            the request's estimate, reserved of the model's token budget
-- ARGV[5]  lease_ttl         seconds the lease lasts unless renewed
-- ARGV[6]  mode              'try' (never queue) or 'wait' (queue when no slot is free)
-- ARGV[7]  beat              a waiter's heartbeat deadline, in seconds from now
-- ARGV[8]  recheck           '1' when this waiter asked before (it may hold a
--                            handed-over slot: this call claims it), else ''
-- ARGV[9]  claim_ttl         seconds a slot handed to a waiter lasts until claimed
-- ARGV[10] publish           'PUBLISH', or 'SPUBLISH' on a cluster
-- ARGV[11] weight            the weight of the waiter's group (its lease id names the
--                            group: '<client>~<group>.<token>'; see _queue.lua)
--
-- The rules are the model's stored configuration (see register). A newcomer
-- never passes a queued waiter: while the queue is not empty, free slots go
-- to it in order (and its waiters are woken on their channels). A grant takes
-- a slot and the lease's share of the model's budget together; the first in
-- line waits for the budget, and everyone behind it.
--
-- Reply (JSON): {status, value, state, events, at}
--   status 'granted'     value = the lease's expiry time
--          'cooldown'    value = seconds until the cooldown ends
--          'at_capacity' value = 0
--          'budget'      value = seconds until the budget has room for this request
--          'queued'      value = for the first in line, seconds until the cooldown
--                        ends or the next lease expires (it should ask again
--                        then: nothing else would wake it); else 0 (it will be
--                        woken when a slot is handed to it)
--          'abandoned'   the caller gave up on this acquire before it ran (its
--                        give-back reached Redis first); nothing granted
--          'oversize'    value = the model's tokens per minute, which this request's
--                        tokens exceed: it could never be granted (no state)
--   state  the domain's public fields
--   events list of [domain, event, from, to]
--   at     when queued, this call's time: Redis's clock is no later than it
--          plus the waiter's own seconds since, which tells the waiter how
--          much of a hand-over's claim window is surely left
-- Errors: 'AIMD_NOT_REGISTERED <cap key>', 'AIMD_CORRUPT <key> field <name> holds <value>'

local now = clock(ARGV[1])
local domain, id, tokens = ARGV[2], ARGV[3], tonumber(ARGV[4])
local lease_ttl, waiting, beat = tonumber(ARGV[5]), ARGV[6] == 'wait', tonumber(ARGV[7])
local recheck, claim_ttl, publish = ARGV[8] == '1', tonumber(ARGV[9]), ARGV[10]
local weight = tonumber(ARGV[11]) or 1
local k = domain_keys(KEYS)

local m, err = load_model(k.cap, now)
if err then return redis.error_reply(err) end
if not m.emax then return redis.error_reply('AIMD_NOT_REGISTERED ' .. k.cap) end
m.idle_ms = lease_floor(m.idle_ms, lease_ttl)
local b
b, err = budget.load(m, k.budget, now)
if err then return redis.error_reply(err) end
if not budget.fits(b, tokens) then return reply({status = 'oversize', value = b.tpm, at = now}) end

local d
d, err = load_domain(k.domain)
if err then return redis.error_reply(err) end

if not d then d = create_domain(domain, k, now, m) end

local q = queue_of(domain, k, publish, m.idle_ms, claim_ttl, b)
count_leases(domain, d, k, now, b, m)
rules.on_acquire(domain, d, now, m)

local status, value = nil, 0
local expiry_text = fmt(now + lease_ttl)
local handoff_expiry
local queued = redis.call('ZCARD', k.queue)
if recheck then
  local held = redis.call('ZSCORE', k.leases, id)
  if held and tonumber(held) > 0 then  -- handed over; the wake-up was lost or is on its way: claimed now
    redis.call('ZADD', k.leases, 'XX', expiry_text, id)
    status, value = 'granted', expiry_text
    leave(q, id)
  end
end

if not status then
  if queued > 0 then  -- an empty queue (the common case) costs one ZCARD, no more
    reap_waiters(q, now)
    queued = redis.call('ZCARD', k.queue)
  end
  if queued == 0 then
    status, value = try_take(d, k, b, id, tokens, now, lease_ttl, m.idle_ms)
    if waiting and (status == 'cooldown' or status == 'at_capacity' or status == 'budget') then
      enqueue(q, id, tokens, now + beat, weight)
      status, value = 'queued', first_in_line_wait(q, d, id, tokens, now)
    end
  else
    local mine = redis.call('ZSCORE', k.queue, id)
    if waiting then
      if mine then redis.call('ZADD', k.beats, now + beat, id) else enqueue(q, id, tokens, now + beat, weight) end
    end
    local got_self, claim = promote(q, d, now, lease_ttl, id)
    handoff_expiry = claim
    if got_self then
      status, value = 'granted', expiry_text
    elseif not waiting and d.reserved and d.reserved[group_of(id)] then
      -- (The queue was served just now: a reserved group's slots still
      -- free are nobody else's.)
      status, value = try_take(d, k, b, id, tokens, now, lease_ttl, m.idle_ms)
    elseif waiting then
      status, value = 'queued', first_in_line_wait(q, d, id, tokens, now)
    elseif now < d.blocked_until then
      status, value = 'cooldown', d.blocked_until - now
    elseif d.in_flight < d.current_limit and budget.wait(b, id, tokens) > 0 then
      status, value = 'budget', budget.wait(b, id, tokens)
    else
      status = 'at_capacity'
    end
  end
end

if queued > 0 or status == 'queued' then d.waiters = waiting_count(q) else d.waiters = 0 end
save_domain(k.domain, d)
budget.save(b, m.idle_ms)
publish_handoffs(q, d, handoff_expiry)
flush_events(k.events, now, m.idle_ms)
touch(m.idle_ms, k.domain, k.cap, k.leases, k.index, k.events, k.queue, k.beats, k.groups, k.want, k.handed,
  b and k.budget, b and k.tokens)
return '{"status":"' .. status .. '","value":' .. (type(value) == 'string' and value or fmt(value)) .. (status == 'queued' and ',"at":' .. fmt(now) or '') ..
  ',"state":' .. state_json(d) .. events_json() .. '}'
