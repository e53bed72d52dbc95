-- register: record an alias's max_parallel_requests (and its budget, if it
-- sets one) for a model, recompute the model's effective max (the minimum
-- over its aliases) and clamp every existing domain of the model down to it
-- (never up), recompute the budget in force (see _budget.lua), and store the
-- registering process's configuration of the loop: the last register wins,
-- and every script runs the stored one (see _fields.lua).
--
-- KEYS[1]    cap hash       <ns>:{<provider>/<model>}:cap
-- KEYS[2]    domain index   <ns>:{<provider>/<model>}:domains
-- KEYS[3]    event stream   <ns>:{<provider>/<model>}:events
-- KEYS[3+i]  domain hash of the i-th domain the caller read from the index
--
-- ARGV[1]    now               seconds, or '' for the server's TIME
-- ARGV[2]    alias
-- ARGV[3]    max_parallel      the alias's max_parallel_requests
-- ARGV[4]    rpm               the alias's requests per minute, or '' for none
-- ARGV[5]    tpm               the alias's tokens per minute, or '' for none
-- ARGV[6]    config            the loop's configuration, JSON: {name: value} under
--                              ThrottleConfig's names (see CONFIG_NAMES)
-- ARGV[7]    settings_id       a token new to this call, stored with the configuration
--                              (the scripts cache a configuration by it: see _fields.lua)
-- ARGV[7+i]  name of the domain in KEYS[3+i]
--
-- Reply (JSON): {status: 'ok', effective_max, events}, or {status: 'stale',
--        domains} when the index holds domains the caller did not pass (one
--        was created meanwhile): call again with these names.
-- Errors: 'AIMD_CORRUPT <key> field <name> holds <value>', 'AIMD_BAD_CONFIG ...'

local now = clock(ARGV[1])
local alias, max_parallel = ARGV[2], ARGV[3]
local alias_budget = {rpm = ARGV[4], tpm = ARGV[5]}
local alias_field = 'alias:' .. alias
local ARGS = 7
local config, err = parse_settings(KEYS[1], ARGV[6])
if not config then return redis.error_reply(err) end
local idle_ms = idle_ms_of(config.idle_ttl_seconds or CONFIG_DEFAULTS.idle_ttl_seconds)

local passed = {}
for i = ARGS + 1, #ARGV do passed[ARGV[i]] = true end
local members = redis.call('SMEMBERS', KEYS[2])
for _, name in ipairs(members) do
  if not passed[name] then
    return reply({status = 'stale', domains = members})
  end
end

local flat = redis.call('HGETALL', KEYS[1])
local old_max = nil
local emax = tonumber(max_parallel)
-- The least budget over the aliases, this one's new value included.
local least = {rpm = tonumber(alias_budget.rpm), tpm = tonumber(alias_budget.tpm)}
local cap = {}
for i = 1, #flat, 2 do
  local field, raw = flat[i], flat[i + 1]
  local prefix, name = string.match(field, '^(%l+):(.*)$')
  local budget_field = (prefix == 'rpm' or prefix == 'tpm') and name ~= alias
  if field == 'effective_max' or (prefix == 'alias' and name ~= alias) or budget_field
      or string.find(field, '^[rt]pm_heard$') or field == 'rpm' or field == 'tpm' then
    local v, err = parse(KEYS[1], field, raw, 'pos')
    if not v then return redis.error_reply(err) end
    if field == 'effective_max' then
      old_max = v
    elseif prefix == 'alias' then
      emax = math.min(emax, v)
    elseif budget_field then
      least[prefix] = math.min(least[prefix] or v, v)
    else
      cap[field] = v
    end
  end
end

local domains = {}
for i = 4, #KEYS do
  local d, err = load_domain(KEYS[i])
  if err then return redis.error_reply(err) end
  domains[i] = d
end

redis.call('HSET', KEYS[1], alias_field, max_parallel, 'effective_max', fmt(emax))
save_settings(KEYS[1], config, ARGV[7])
if old_max ~= emax then emit('*', 'effective_max', old_max or 0, emax) end
for _, name in ipairs({'rpm', 'tpm'}) do
  if alias_budget[name] ~= '' then
    redis.call('HSET', KEYS[1], name .. ':' .. alias, alias_budget[name])
  else
    redis.call('HDEL', KEYS[1], name .. ':' .. alias)
  end
  if least[name] then
    redis.call('HSET', KEYS[1], name .. '_registered', fmt(least[name]))
  else
    redis.call('HDEL', KEYS[1], name .. '_registered')
  end
  cap[name .. '_registered'] = least[name]
end
budget.settle_limits(KEYS[1], cap)
for i = 4, #KEYS do
  local name, d = ARGV[i + ARGS - 3], domains[i]
  if not d then
    redis.call('SREM', KEYS[2], name)
  elseif d.current_limit > emax then
    emit(name, 'clamp', d.current_limit, emax)
    redis.call('HSET', KEYS[i], 'current_limit', fmt(emax))
  end
  expire_new(idle_ms, KEYS[i])
end
local flat_events = flush_events(KEYS[3], now, idle_ms)
for i = 1, 3 do expire_new(idle_ms, KEYS[i]) end
return reply({status = 'ok', effective_max = emax, events = flat_events})
