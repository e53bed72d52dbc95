-- set_limit: an operator sets a domain's current limit (see
-- rules.on_set_limit: clamped to 1..effective max, a running ramp stops).
--
-- KEYS[1] cap hash       <ns>:{<provider>/<model>}:cap
-- KEYS[2] domain hash    <ns>:{<provider>/<model>}:<domain>
-- KEYS[3] event stream   <ns>:{<provider>/<model>}:events
--
-- ARGV[1] now               seconds, or '' for the server's TIME
-- ARGV[2] domain            the domain's name
-- ARGV[3] limit             the new limit (a whole number >= 1)
--
-- Reply: the limit now in force.
-- Errors: 'AIMD_NOT_REGISTERED <cap key>', 'AIMD_NO_DOMAIN <domain key>',
--         'AIMD_CORRUPT <key> field <name> holds <value>'

local now = clock(ARGV[1])
local domain, limit = ARGV[2], tonumber(ARGV[3])

local m, err = load_model(KEYS[1], now)
if err then return redis.error_reply(err) end
if not m.emax then return redis.error_reply('AIMD_NOT_REGISTERED ' .. KEYS[1]) end
local d
d, err = load_domain(KEYS[2])
if err then return redis.error_reply(err) end
if not d then return redis.error_reply('AIMD_NO_DOMAIN ' .. KEYS[2]) end

rules.on_set_limit(domain, d, now, m, limit)
save_domain(KEYS[2], d)
flush_events(KEYS[3], now, m.idle_ms)
return d.current_limit
