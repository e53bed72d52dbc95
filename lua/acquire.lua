-- acquire: take one slot of a domain as a lease, or join the domain's queue.
--
-- KEYS[1] cap hash       <ns>:{<provider>/<model>}:cap
-- KEYS[2] domain hash    <ns>:{<provider>/<model>}:<domain>
-- KEYS[3] leases zset    <ns>:{<provider>/<model>}:<domain>:leases
--                        lease id -> expiry; a negative score -t is the tombstone
--                        of an acquire given up before it ran (forgotten at t)
-- KEYS[4] domain index   <ns>:{<provider>/<model>}:domains (set of domain names)
-- KEYS[5] event stream   <ns>:{<provider>/<model>}:events
-- KEYS[6] queue zset     <ns>:{<provider>/<model>}:<domain>:queue (waiter id -> ticket)
-- KEYS[7] beats zset     <ns>:{<provider>/<model>}:<domain>:beats (waiter id -> heartbeat deadline)
-- KEYS[8] ticket counter <ns>:{<provider>/<model>}:<domain>:tickets
-- KEYS[9] budget hash    <ns>:{<provider>/<model>}:cap:budget (see _budget.lua)
--
-- ARGV[1]  now               seconds, or '' for the server's TIME
-- ARGV[2]  domain            the domain's name (for the index and the events)
-- ARGV[3]  lease_id          the lease to grant (for a waiter: its waiter id); an id
--                            ending in '.t<n>' reserves n tokens of the model's budget
-- ARGV[4]  lease_ttl         seconds
-- ARGV[5]  rampup_seconds
-- ARGV[6]  ceiling_ttl       seconds (0: never forget)
-- ARGV[7]  idle_ms           idle expiry in milliseconds (0: never expire)
-- ARGV[8]  events_maxlen     the event stream's approximate MAXLEN
-- ARGV[9]  mode              'try' (never queue) or 'wait' (queue when no slot is free)
-- ARGV[10] beat              a waiter's heartbeat deadline, in seconds from now
-- ARGV[11] wake_prefix       <ns>:{<provider>/<model>}:wake:
-- ARGV[12] publish           'PUBLISH', or 'SPUBLISH' on a cluster
-- ARGV[13] recheck           '1' when this waiter asked before (it may hold a
--                            handed-over slot: this call claims it), else ''
-- ARGV[14] claim_ttl         seconds a slot handed to a waiter lasts until claimed
-- ARGV[15] policy            'classic' or 'adaptive': the rules of a domain this
--                            call creates (a domain keeps the policy it began with)
--
-- A newcomer never passes a queued waiter: while the queue is not empty, free
-- slots go to it in order (and its waiters are woken on their channels). A
-- grant takes a slot and the lease's share of the model's budget together;
-- the first in line waits for the budget, and everyone behind it.
--
-- Reply: {status, value, state, events, queued_at}
--   status 'granted'     value = the lease's expiry time
--          'cooldown'    value = seconds until the cooldown ends
--          'at_capacity' value = 0
--          'budget'      value = seconds until the budget has room for this request
--          'queued'      value = for the first in line, seconds until the cooldown
--                        ends or the next lease expires (it should ask again
--                        then: nothing else would wake it); else 0 (it will be
--                        woken when a slot is handed to it)
--          'abandoned'   value = 0: the caller gave up on this acquire before it
--                        ran (its give-back reached Redis first); nothing granted
--          'oversize'    value = the model's tokens per minute, which this request's
--                        tokens exceed: it could never be granted (state '')
--   state  the domain's nine public fields, in order, joined by commas
--   events flat list of (domain, event, from, to) quadruples
--   queued_at when queued, this call's time (else ''): Redis's clock is no later
--          than it plus the waiter's own seconds since, which tells the waiter
--          how much of a hand-over's claim window is surely left
-- Errors: 'AIMD_NOT_REGISTERED <cap key>', 'AIMD_CORRUPT <key> field <name> holds <value>'

local now = clock(ARGV[1])
local domain, id = ARGV[2], ARGV[3]
local lease_ttl, rampup_seconds, ceiling_ttl = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local idle_ms, events_maxlen = tonumber(ARGV[7]), ARGV[8]
local waiting, beat = ARGV[9] == 'wait', tonumber(ARGV[10])
local wake_prefix, publish, recheck = ARGV[11], ARGV[12], ARGV[13] == '1'
local claim_ttl, policy = tonumber(ARGV[14]), ARGV[15]

local cap, err = budget.read_cap(KEYS[1])
if err then return redis.error_reply(err) end
local emax = cap.effective_max
if not emax then return redis.error_reply('AIMD_NOT_REGISTERED ' .. KEYS[1]) end
local b
b, err = budget.load(cap, KEYS[9], now)
if err then return redis.error_reply(err) end
if not budget.fits(b, id) then return {'oversize', fmt(b.tpm), '', {}, ''} end

local d
d, err = load_domain(KEYS[2])
if err then return redis.error_reply(err) end

if not d then
  d = new_domain(now, emax, rampup_seconds, policy)
  redis.call('SADD', KEYS[4], domain)
  emit(domain, d.rampup_active == 1 and 'ramp_start' or 'created', 0, d.current_limit)
end

local q = queue_of(KEYS[6], KEYS[7], KEYS[8], KEYS[3], wake_prefix, publish, idle_ms, claim_ttl)
q.budget = b
reap(domain, d, KEYS[3], now)
d.in_flight = live_leases(KEYS[3])
d.rampup_seconds = rampup_seconds
rules.refresh(domain, d, now, emax, ceiling_ttl)
rules.ramp(domain, d, now, emax, rampup_seconds)

local status, value, value_text = nil, 0, nil
local expiry_text = fmt(now + lease_ttl)
local handoff_expiry
local queued = redis.call('ZCARD', q.queue)
if recheck then
  local held = redis.call('ZSCORE', KEYS[3], id)
  if held and tonumber(held) > 0 then  -- handed over; the wake-up was lost or is on its way: claimed now
    redis.call('ZADD', KEYS[3], 'XX', expiry_text, id)
    status, value, value_text = 'granted', now + lease_ttl, expiry_text
    leave(q, id)
  end
end

if not status then
  if queued > 0 then  -- an empty queue (the common case) costs one ZCARD, no more
    reap_waiters(q, now)
    queued = redis.call('ZCARD', q.queue)
  end
  if queued == 0 then
    if now < d.blocked_until then
      status, value = 'cooldown', d.blocked_until - now
    elseif d.in_flight >= d.current_limit then
      status = 'at_capacity'
    elseif budget.wait(b, id) > 0 then
      status, value = 'budget', budget.wait(b, id)
    else
      value, value_text = now + lease_ttl, expiry_text
      if take_lease(d, KEYS[3], id, expiry_text, idle_ms, b) then
        status = 'granted'
      else
        status, value = 'abandoned', 0
      end
    end
    if waiting and (status == 'cooldown' or status == 'at_capacity' or status == 'budget') then
      enqueue(q, id, now + beat)
      status, value = 'queued', first_in_line_wait(q, d, id, now)
    end
  else
    local mine = redis.call('ZSCORE', q.queue, id)
    if waiting then
      if mine then redis.call('ZADD', q.beats, now + beat, id) else enqueue(q, id, now + beat) end
    end
    local got_self, claim = promote(q, d, now, lease_ttl, id)
    handoff_expiry = claim
    if got_self then
      status, value, value_text = 'granted', now + lease_ttl, expiry_text
    elseif waiting then
      status, value = 'queued', first_in_line_wait(q, d, id, now)
    elseif now < d.blocked_until then
      status, value = 'cooldown', d.blocked_until - now
    elseif d.in_flight < d.current_limit and budget.wait(b, id) > 0 then
      status, value = 'budget', budget.wait(b, id)
    else
      status = 'at_capacity'
    end
  end
end

if queued > 0 or status == 'queued' then d.waiters = redis.call('ZCARD', q.queue) else d.waiters = 0 end
save_domain(KEYS[2], d)
budget.save(b, idle_ms)
publish_handoffs(q, d, handoff_expiry)
local flat_events = flush_events(KEYS[5], now, events_maxlen, idle_ms)
touch(idle_ms, KEYS[2], KEYS[1], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], b and KEYS[9])
return {status, value_text or fmt(value), state_text(d), flat_events, status == 'queued' and fmt(now) or ''}
