-- configure: change some of a registered model's stored loop configuration
-- (an operator's change; register stores a whole configuration). Each change
-- is an event of the model. Domains take up a new policy at their next touch
-- (see rules.on_acquire).
--
-- KEYS[1] cap hash       <ns>:{<provider>/<model>}:cap
-- KEYS[2] event stream   <ns>:{<provider>/<model>}:events
--
-- ARGV[1] now               seconds, or '' for the server's TIME
-- ARGV[2] config            the settings to change, JSON: {name: value} under
--                           ThrottleConfig's names (see CONFIG_NAMES)
-- ARGV[3] settings_id       a token new to this call, stored with the configuration
--
-- Reply (JSON): {config, events}: the whole configuration now stored, and the changes
-- Errors: 'AIMD_NOT_REGISTERED <cap key>', 'AIMD_BAD_CONFIG ...',
--         'AIMD_CORRUPT <key> field <name> holds <value>'

local now = clock(ARGV[1])
local m, err = load_model(KEYS[1], now, false, true)  -- as stored now: a hand edit too
if err then return redis.error_reply(err) end
if not m.emax then return redis.error_reply('AIMD_NOT_REGISTERED ' .. KEYS[1]) end
local settings
settings, err = parse_settings(KEYS[1], ARGV[2])
if not settings then return redis.error_reply(err) end

local config = {}  -- m.config may be shared (see model_config): a copy
for name, v in pairs(m.config) do config[name] = v end
for name, v in pairs(settings) do config[name] = v end
save_settings(KEYS[1], config, ARGV[3])
return reply({config = config, events = flush_events(KEYS[2], now, idle_ms_of(config.idle_ttl_seconds))})
