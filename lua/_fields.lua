-- The two hashes the rules read, their fields and how their text is judged:
-- a domain's state, and the model's registration and configuration (its cap
-- hash). aimd_redis/schema.py holds the same lists (a test compares them).

-- Kinds: pos: whole number >= 1; count: whole number >= 0; time: number >= 0;
-- flag: 0 or 1; policy: a policy's name.
local POLICIES = {classic = true, adaptive = true, latency = true}

-- The number (or name) a field's text holds and whether the text is plain
-- (as the scripts write it: rewritten plain when it is saved if not); nil and
-- the error when the scripts cannot use it. Other decimal spellings ('5.0',
-- ' 5', '1e1') are accepted; hex, inf, nan and absurd magnitudes are not.
local function parse(key, name, text, kind)
  if kind == 'policy' then
    if POLICIES[text] then return text, true end
    return nil, corrupt(key, name, text)
  end
  local v = text and tonumber(text)
  if v then
    -- Plain: as fmt writes it (and so a JSON number): digits, no leading
    -- zero, a fraction only after a point.
    local plain = (string.find(text, '^%d+$') or (kind == 'time' and string.find(text, '^%d+%.%d+$')))
      and not string.find(text, '^0%d') and true or false
    if plain or string.find(text, '^%s*[%d.]+[eE]?[+-]?%d*%s*$') then
      if kind == 'time' then
        if v >= 0 and v <= MAX_TIME then return v, plain end
      elseif v % 1 == 0 and v >= (kind == 'pos' and 1 or 0) and v <= (kind == 'flag' and 1 or MAX_COUNT) then
        return v, plain
      end
    end
  end
  return nil, corrupt(key, name, text)
end

-- == the domain hash =========================================================
--
-- The first nine fields are the public state, in the order of DomainState.
-- Then: when a 429 last confirmed the ceiling (it is forgotten ceiling_ttl
-- after), when the limit was last cut (a request granted before it is stale),
-- two counters for monitoring, the adaptive policy's two (see _rules.lua),
-- the policy the domain runs (the model's, once the domain has switched
-- to it: see rules.on_touch), and the latency policy's five (in the hash of
-- a domain that runs it): its no-load and recent latency (seconds, or
-- seconds per token), the samples' spread around the recent one (a number),
-- successes since its last step, when its window began, and the limit a dip
-- will go back to (0: none).
local FIELD_NAMES = {
  'current_limit', 'in_flight', 'blocked_until', 'success_streak', 'waiters', 'rate_limit_ceiling',
  'consecutive_429s', 'rampup_started_at', 'rampup_active',
  'ceiling_confirmed_at', 'last_cut_at', 'total_429s', 'total_reclaimed', 'probe_after', 'increase_step',
  'policy', 'latency_noload', 'latency_recent', 'latency_spread', 'latency_round', 'latency_window_at',
  'latency_dip',
}
local FIELD_KINDS = {
  'pos', 'count', 'time', 'count', 'count', 'count', 'count', 'time', 'flag',
  'time', 'time', 'count', 'count', 'count', 'count', 'policy', 'time', 'time', 'time', 'count', 'time', 'count',
}
-- Fields an older release did not write, and what they count as when missing.
local FIELD_DEFAULTS = {
  last_cut_at = 0, probe_after = 0, increase_step = 0, policy = 'classic', latency_noload = 0, latency_recent = 0,
  latency_spread = 0, latency_round = 0, latency_window_at = 0, latency_dip = 0,
}

-- The fields every policy keeps; the latency policy's follow them, and are
-- read and written only for a domain that runs it (the other policies pay
-- nothing for them; missing, they count as their defaults).
local SHARED_FIELDS = 16

-- The numeric fields as the scripts write them, joined by commas: one match
-- instead of one per field on the common path.
local PLAIN_FIELDS = '^%d+,%d+,%d+%.?%d*,%d+,%d+,%d+,%d+,%d+%.?%d*,%d+,%d+%.?%d*,%d+%.?%d*,' ..
  '%d+,%d+,%d+,%d+$'
local PLAIN_LATENCY = '^%d+%.?%d*,%d+%.?%d*,%d+%.?%d*,%d+,%d+%.?%d*,%d+$'

-- A leading zero ('07') or a bare point ('5.') is not plain.
local function odd_spelling(joined)
  return string.find(joined, '^0%d') or string.find(joined, ',0%d') or string.find(joined, '%.,')
    or string.find(joined, '%.$')
end

-- The latency policy's fields as the scripts wrote them (into d), or nil.
local function load_plain_latency(raw, read, d)
  local ok, joined = pcall(table.concat, raw, ',', SHARED_FIELDS + 1, #FIELD_NAMES)
  if not ok or not string.find(joined, PLAIN_LATENCY) or odd_spelling(joined) then return nil end
  for i = SHARED_FIELDS + 1, #FIELD_NAMES do
    local v = tonumber(raw[i])
    if v > (FIELD_KINDS[i] == 'time' and MAX_TIME or MAX_COUNT) then return nil end
    read[i], d[FIELD_NAMES[i]] = v, v
  end
  return d
end

-- The domain as the scripts wrote it, or nil when anything is missing,
-- spelled otherwise or out of range (load_domain then judges field by field).
-- Built by one table constructor each: a table filled key by key is resized
-- over and over, and that is most of the cost of a call.
local function load_plain(raw)
  local policy = raw[16]
  if not POLICIES[policy] then return nil end
  local ok, joined = pcall(table.concat, raw, ',', 1, 15)
  if not ok or not string.find(joined, PLAIN_FIELDS) then return nil end
  local read = {
    tonumber(raw[1]), tonumber(raw[2]), tonumber(raw[3]), tonumber(raw[4]), tonumber(raw[5]),
    tonumber(raw[6]), tonumber(raw[7]), tonumber(raw[8]), tonumber(raw[9]), tonumber(raw[10]),
    tonumber(raw[11]), tonumber(raw[12]), tonumber(raw[13]), tonumber(raw[14]), tonumber(raw[15]), policy,
  }
  -- The pattern has made every number whole or decimal and not negative.
  if string.find(joined, '^0%d') or string.find(joined, ',0%d') or string.find(joined, '%.,') then return nil end
  if read[1] < 1 or read[9] > 1 or read[3] > MAX_TIME or read[8] > MAX_TIME or read[10] > MAX_TIME
    or read[11] > MAX_TIME or math.max(read[1], read[2], read[4], read[5], read[6], read[7], read[12],
    read[13], read[14], read[15]) > MAX_COUNT then return nil end
  local d = {
    current_limit = read[1], in_flight = read[2], blocked_until = read[3], success_streak = read[4],
    waiters = read[5], rate_limit_ceiling = read[6], consecutive_429s = read[7], rampup_started_at = read[8],
    rampup_active = read[9], ceiling_confirmed_at = read[10], last_cut_at = read[11], total_429s = read[12],
    total_reclaimed = read[13], probe_after = read[14], increase_step = read[15], policy = policy,
    latency_noload = 0, latency_recent = 0, latency_spread = 0, latency_round = 0, latency_window_at = 0,
    latency_dip = 0, raw = raw, read = read,
  }
  if policy == 'latency' then return load_plain_latency(raw, read, d) end
  return d
end

-- The domain as a table of numbers, or nil if it does not exist. d.raw keeps
-- the strings as read, so that saving touches only what changed.
local function load_domain(key)
  local raw = redis.call('HMGET', key, unpack(FIELD_NAMES, 1, SHARED_FIELDS))
  if raw[SHARED_FIELDS] == 'latency' then
    local more = redis.call('HMGET', key, unpack(FIELD_NAMES, SHARED_FIELDS + 1))
    for i = 1, #more do raw[SHARED_FIELDS + i] = more[i] end
  end
  local d = load_plain(raw)
  if d then return d end
  local read = {}
  d = {raw = raw, read = read}
  local present, missing = false, false
  for i = 1, #FIELD_NAMES do
    local text = raw[i]
    if text then
      present = true
      local v, plain = parse(key, FIELD_NAMES[i], text, FIELD_KINDS[i])
      if not v then return nil, plain end
      if not plain then raw[i] = false end
      d[FIELD_NAMES[i]], read[i] = v, v
    else
      missing = true
    end
  end
  if not present then return nil end
  if missing then
    for i = 1, #FIELD_NAMES do
      local name = FIELD_NAMES[i]
      if d[name] == nil then
        if FIELD_DEFAULTS[name] == nil then return nil, corrupt(key, name, nil) end
        d[name] = FIELD_DEFAULTS[name]
      end
    end
  end
  return d
end

-- A domain on its first touch: the ramp runs iff the model's ramp is on and
-- its effective max is above 1.
local function new_domain(now, m)
  local ramp = m.config.rampup_seconds > 0 and m.emax > 1
  return {
    current_limit = ramp and 1 or m.emax, in_flight = 0, blocked_until = 0,
    success_streak = 0, waiters = 0, rate_limit_ceiling = 0, consecutive_429s = 0,
    rampup_started_at = now, rampup_active = ramp and 1 or 0, ceiling_confirmed_at = 0, last_cut_at = 0,
    total_429s = 0, total_reclaimed = 0, probe_after = 0, increase_step = 0, policy = m.config.policy,
    latency_noload = 0, latency_recent = 0, latency_spread = 0, latency_round = 0, latency_window_at = 0,
    latency_dip = 0, raw = {}, read = {},
  }
end

-- Writes the fields whose value changed since they were read (and any the
-- scripts would spell otherwise).
local function save_domain(key, d)
  local flat, n, raw, read = {}, 0, d.raw, d.read
  for i = 1, d.policy == 'latency' and #FIELD_NAMES or SHARED_FIELDS do
    local name = FIELD_NAMES[i]
    local v = d[name]
    if not raw[i] or read[i] ~= v then
      local text = FIELD_KINDS[i] == 'policy' and v or fmt(v)
      raw[i] = text
      flat[n + 1], flat[n + 2] = name, text
      n = n + 2
    end
  end
  if n > 0 then redis.call('HSET', key, unpack(flat)) end
end

-- The public state as JSON, as replies and wake-ups carry it; call after
-- save_domain, which leaves every field's text in d.raw as fmt writes it (a
-- JSON number).
local function state_json(d)
  local raw = d.raw
  return '{"current_limit":' .. raw[1] .. ',"in_flight":' .. raw[2] .. ',"blocked_until":' .. raw[3] ..
    ',"success_streak":' .. raw[4] .. ',"waiters":' .. raw[5] .. ',"rate_limit_ceiling":' .. raw[6] ..
    ',"consecutive_429s":' .. raw[7] .. ',"rampup_started_at":' .. raw[8] .. ',"rampup_active":' ..
    (raw[9] == '1' and 'true' or 'false') .. '}'
end

-- == the cap hash: the model's registration and configuration ================
--
-- effective_max (the least max_parallel_requests over the aliases), the
-- budget in force (rpm, tpm; see _budget.lua), and the loop's configuration
-- as the last register stored it, under ThrottleConfig's names. Every script
-- runs the model's stored configuration, whatever the caller's own is.
local CONFIG_NAMES = {
  'policy', 'reduce_factor', 'additive_increase', 'success_window', 'cooldown_seconds', 'ceiling_overshoot',
  'rampup_seconds', 'ceiling_ttl_seconds', 'max_cooldown_seconds', 'idle_ttl_seconds', 'latency_tolerance',
  'latency_window_seconds', 'reserved',
}
-- Each setting's least and greatest value, and whether it is whole; the
-- bounds are ThrottleConfig's (open bounds are the next value in).
local CONFIG_RANGES = {
  reduce_factor = {1e-9, 1 - 1e-9}, additive_increase = {1, MAX_COUNT, true},
  success_window = {1, MAX_COUNT, true}, cooldown_seconds = {1e-9, MAX_TIME}, ceiling_overshoot = {0, MAX_COUNT},
  rampup_seconds = {0, MAX_TIME}, ceiling_ttl_seconds = {0, MAX_TIME}, max_cooldown_seconds = {1e-9, MAX_TIME},
  idle_ttl_seconds = {0, MAX_TIME}, latency_tolerance = {1 + 1e-9, 100}, latency_window_seconds = {1e-9, MAX_TIME},
}
-- What a model registered by an older release (which stored none) runs:
-- ThrottleConfig's defaults.
local CONFIG_DEFAULTS = {
  policy = 'classic', reduce_factor = 0.75, additive_increase = 1, success_window = 25, cooldown_seconds = 2,
  ceiling_overshoot = 0.1, rampup_seconds = 0, ceiling_ttl_seconds = 300, max_cooldown_seconds = 3600,
  idle_ttl_seconds = 600, latency_tolerance = 1.4, latency_window_seconds = 30, reserved = '',
}

-- The shares of the limit held for groups, '<group>=<share>,...' (each share
-- above 0, all together at most MAX_RESERVED; 'default' cannot hold one:
-- its in-flight count is not kept), as {group = share}; nil for none, false
-- when the text is not that. Parsed once per text.
local MAX_RESERVED, MAX_RESERVED_GROUPS = 0.9, 16
local reserved_parsed, reserved_count = {}, 0

local function reserved_shares(text)
  if text == '' then return nil end
  local known = reserved_parsed[text]
  if known ~= nil then return known end
  local shares, sum, count = {}, 0, 0
  for part in string.gmatch(text, '[^,]+') do
    count = count + 1
    if count > MAX_RESERVED_GROUPS then return false end
    local g, v = string.match(part, '^([%w_-]+)=([%d.]+)$')
    v = tonumber(v)
    if not v or v <= 0 or #g > 64 or g == 'default' or shares[g] then return false end
    shares[g], sum = v, sum + v
  end
  if sum == 0 or sum > MAX_RESERVED + 1e-9 then return false end
  if reserved_count >= 100 then reserved_parsed, reserved_count = {}, 0 end
  reserved_parsed[text], reserved_count = shares, reserved_count + 1
  return shares
end

local function idle_ms_of(seconds)
  return seconds > 0 and math.max(1, math.floor(seconds * 1000 + 0.5)) or 0
end

-- The model's idle expiry as a caller whose leases last lease_ttl seconds
-- applies it: never shorter than a lease (ThrottleConfig's own rule, which a
-- process can no longer keep alone: the idle time is the last register's).
local function lease_floor(idle_ms, lease_ttl)
  if idle_ms <= 0 then return 0 end
  return math.max(idle_ms, math.ceil(lease_ttl * 1000))
end

-- A setting's value from its text, or nil and the error.
local function parse_setting(key, name, text)
  if name == 'policy' then return parse(key, name, text, 'policy') end
  if name == 'reserved' then
    if reserved_shares(text) == false then return nil, corrupt(key, name, text) end
    return text
  end
  local range = CONFIG_RANGES[name]
  local v = tonumber(text)
  if not v or v ~= v or v < range[1] or v > range[2] or (range[3] and v % 1 ~= 0) then
    return nil, corrupt(key, name, text)
  end
  return v
end

-- (Literal lists: a library's load may call no function, unpack included.)
local CAP_FIELDS = {'effective_max', 'rpm', 'tpm'}
local CAP_SOURCES = {'rpm_registered', 'tpm_registered', 'rpm_heard', 'tpm_heard'}

-- The stored configuration, parsed; or nil and the error.
local function read_config(cap_key)
  local raw = redis.call('HMGET', cap_key, unpack(CONFIG_NAMES))
  local config = {}
  for i, name in ipairs(CONFIG_NAMES) do
    if raw[i] then
      local v, err = parse_setting(cap_key, name, raw[i])
      if not v then return nil, err end
      config[name] = v
    else
      config[name] = CONFIG_DEFAULTS[name]
    end
  end
  return config
end

-- Configurations read within the last CONFIG_FRESH seconds, by the
-- settings_id register and configure store with them (a token new each
-- time, so an id names one configuration of one database: the function
-- library, and so this table, is the server's). A function library keeps it
-- between calls, and reading and parsing ten settings would be a tenth of a
-- call. A fleet's own changes apply at the next call (they come with a new
-- id); a setting changed by hand (HSET) within CONFIG_FRESH seconds. A model
-- without an id (stored by hand, or by an older release) is read every call.
-- A cached configuration is shared: never changed.
local CONFIG_FRESH = 1
local recent_configs, recent_count = {}, 0

local function model_config(cap_key, id, now)
  local known = id and recent_configs[id]
  if known and now >= known.at and now - known.at < CONFIG_FRESH then return known.config end
  local config, err = read_config(cap_key)
  if not config then return nil, err end
  if id then
    if recent_count >= 1000 then recent_configs, recent_count = {}, 0 end
    if not known then recent_count = recent_count + 1 end
    recent_configs[id] = {config = config, at = now}
  end
  return config
end

-- The model: m.emax (nil when nobody registered it), m.rpm and m.tpm (the
-- budget in force, nil when not set) and m.config; with `sources`, also
-- what the budget was made of; with `fresh`, the settings as stored now
-- (never cached). nil and the error when a field is broken.
local function load_model(cap_key, now, sources, fresh)
  local raw = redis.call('HMGET', cap_key, 'effective_max', 'rpm', 'tpm', 'settings_id')
  local m = {}
  for i = 1, 3 do
    if raw[i] then
      local v, err = parse(cap_key, CAP_FIELDS[i], raw[i], 'pos')
      if not v then return nil, err end
      m[CAP_FIELDS[i]] = v
    end
  end
  local config, err = model_config(cap_key, not fresh and raw[4] or nil, now)
  if not config then return nil, err end
  m.emax, m.effective_max, m.config = m.effective_max, nil, config
  m.idle_ms = idle_ms_of(config.idle_ttl_seconds)
  if sources then
    local more = redis.call('HMGET', cap_key, unpack(CAP_SOURCES))
    for i = 1, #more do
      if more[i] then
        local v, err2 = parse(cap_key, CAP_SOURCES[i], more[i], 'pos')
        if not v then return nil, err2 end
        m[CAP_SOURCES[i]] = v
      end
    end
  end
  return m
end

-- A configuration sent as JSON ({name: value}, names from CONFIG_NAMES; any
-- subset), validated as stored values are; or nil and the error.
local function parse_settings(key, json)
  local ok, given = pcall(cjson.decode, json)
  if not ok or type(given) ~= 'table' then return nil, 'AIMD_BAD_CONFIG ' .. json end
  local out = {}
  for name, value in pairs(given) do
    if not CONFIG_RANGES[name] and name ~= 'policy' and name ~= 'reserved' then
      return nil, 'AIMD_BAD_CONFIG unknown setting ' .. name
    end
    local v, err = parse_setting(key, name, tostring(value))
    if not v then return nil, err end
    out[name] = v
  end
  return out
end

-- Stores the settings that differ from what the cap hash holds, and
-- settings_id (a token new to this call: see model_config); each change of a
-- stored value is an event of the model ('*').
local function save_settings(cap_key, settings, settings_id)
  local stored = redis.call('HMGET', cap_key, unpack(CONFIG_NAMES))
  local flat = {}
  for i, name in ipairs(CONFIG_NAMES) do
    local v = settings[name]
    if v ~= nil then
      local text = type(v) == 'string' and v or fmt(v)
      if text ~= stored[i] then
        flat[#flat + 1], flat[#flat + 2] = name, text
        -- from: the stored value, or its text when it is none (a hand-broken
        -- 'nan' a register repairs: no number JSON could carry).
        if stored[i] then emit('*', name, (parse_setting(cap_key, name, stored[i])) or stored[i], v) end
      end
    end
  end
  flat[#flat + 1], flat[#flat + 2] = 'settings_id', settings_id
  redis.call('HSET', cap_key, unpack(flat))
end

-- The model's idle expiry in milliseconds (0: never), for scripts that read
-- nothing else of the cap hash.
local function model_idle_ms(cap_key)
  local text = redis.call('HGET', cap_key, 'idle_ttl_seconds')
  return idle_ms_of(text and parse_setting(cap_key, 'idle_ttl_seconds', text) or CONFIG_DEFAULTS.idle_ttl_seconds)
end
