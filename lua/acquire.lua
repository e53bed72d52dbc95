-- acquire: try to take one slot of a domain as a lease.
--
-- KEYS[1] cap hash       <ns>:{<provider>/<model>}:cap
-- KEYS[2] domain hash    <ns>:{<provider>/<model>}:<domain>
-- KEYS[3] leases zset    <ns>:{<provider>/<model>}:<domain>:leases
--                        lease id -> expiry; a negative score -t is the tombstone
--                        of an acquire given up before it ran (forgotten at t)
-- KEYS[4] domain index   <ns>:{<provider>/<model>}:domains (set of domain names)
-- KEYS[5] event stream   <ns>:{<provider>/<model>}:events
--
-- ARGV[1] now in seconds, or '' for the server's TIME
-- ARGV[2] domain name (for the index and the events)
-- ARGV[3] lease id to grant
-- ARGV[4] lease_ttl_seconds
-- ARGV[5] rampup_seconds
-- ARGV[6] ceiling_ttl_seconds (0: never forget)
-- ARGV[7] idle ttl in milliseconds (0: never expire)
-- ARGV[8] event stream MAXLEN (approximate)
--
-- Reply: {status, value, state, events}
--   status 'granted'     value = the lease's expiry time
--          'cooldown'    value = seconds until the cooldown ends
--          'at_capacity' value = 0
--          'abandoned'   value = 0: the caller gave up on this acquire before it
--                        ran (its give-back reached Redis first); nothing granted
--   state  the domain's fields as a flat name/value list
--   events flat list of (domain, event, from, to) quadruples
-- Errors: 'AIMD_NOT_REGISTERED <cap key>', 'AIMD_CORRUPT <key> field <name> holds <value>'

local now = clock(ARGV[1])
local domain = ARGV[2]
local lease_ttl = tonumber(ARGV[4])
local rampup_seconds = tonumber(ARGV[5])
local idle_ms = tonumber(ARGV[7])

local emax, err = read_max(KEYS[1])
if err then return redis.error_reply(err) end
if not emax then return redis.error_reply('AIMD_NOT_REGISTERED ' .. KEYS[1]) end

local d
d, err = load_domain(KEYS[2])
if err then return redis.error_reply(err) end

if not d then
  d = new_domain(now, emax, rampup_seconds)
  redis.call('SADD', KEYS[4], domain)
  emit(domain, d.rampup_active == 1 and 'ramp_start' or 'created', 0, d.current_limit)
end

reap(domain, d, KEYS[3], now)
d.rampup_seconds = rampup_seconds
d.in_flight = redis.call('ZCOUNT', KEYS[3], 0, '+inf')
refresh(domain, d, now, emax, tonumber(ARGV[6]))
ramp(domain, d, now, emax, rampup_seconds)

local status, value
if now < d.blocked_until then
  status, value = 'cooldown', d.blocked_until - now
elseif d.in_flight >= d.current_limit then
  status, value = 'at_capacity', 0
else
  status, value = 'granted', now + lease_ttl
  if redis.call('ZADD', KEYS[3], 'NX', fmt(value), ARGV[3]) == 1 then
    if d.in_flight == 0 then expire_new(idle_ms, KEYS[3]) end
    d.in_flight = d.in_flight + 1
  else
    redis.call('ZREM', KEYS[3], ARGV[3])  -- the tombstone has done its job
    status, value = 'abandoned', 0
  end
end

save_domain(KEYS[2], d)
local flat_events = flush_events(KEYS[5], now, ARGV[8], idle_ms)
touch(idle_ms, KEYS[2], KEYS[1], KEYS[3], KEYS[4], KEYS[5])
return {status, fmt(value), state_reply(d), flat_events}
