-- set_limit: an operator sets a domain's current limit. The value is clamped
-- to 1..effective max, and a running ramp stops (the operator's number wins);
-- the policy's rules move it from there (rules.after_set_limit).
--
-- KEYS[1] cap hash       <ns>:{<provider>/<model>}:cap
-- KEYS[2] domain hash    <ns>:{<provider>/<model>}:<domain>
-- KEYS[3] event stream   <ns>:{<provider>/<model>}:events
--
-- ARGV[1] now               seconds, or '' for the server's TIME
-- ARGV[2] domain            the domain's name
-- ARGV[3] limit             the new limit (a whole number >= 1)
-- ARGV[4] events_maxlen     the event stream's approximate MAXLEN
-- ARGV[5] idle_ms           idle expiry in milliseconds (0: never expire)
--
-- Reply: the limit now in force.
-- Errors: 'AIMD_NOT_REGISTERED <cap key>', 'AIMD_NO_DOMAIN <domain key>',
--         'AIMD_CORRUPT <key> field <name> holds <value>'

local now = clock(ARGV[1])
local domain, limit = ARGV[2], tonumber(ARGV[3])
local events_maxlen, idle_ms = ARGV[4], tonumber(ARGV[5])

local emax, err = registered_max(KEYS[1])
if err then return redis.error_reply(err) end
local d
d, err = load_domain(KEYS[2])
if err then return redis.error_reply(err) end
if not d then return redis.error_reply('AIMD_NO_DOMAIN ' .. KEYS[2]) end

local before = d.current_limit
d.current_limit = math.max(1, math.min(emax, limit))
if d.rampup_active == 1 then
  d.rampup_active = 0
  emit(domain, 'ramp_stopped', before, before)
end
emit(domain, 'set_limit', before, d.current_limit)
rules.after_set_limit(domain, d, now, emax)

save_domain(KEYS[2], d)
flush_events(KEYS[3], now, events_maxlen, idle_ms)
return d.current_limit
