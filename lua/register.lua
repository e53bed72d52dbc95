-- register: record an alias's max_parallel_requests for a model, recompute
-- the model's effective max (the minimum over its aliases) and clamp every
-- existing domain of the model down to it (never up).
--
-- KEYS[1]    cap hash       <ns>:{<provider>/<model>}:cap
-- KEYS[2]    domain index   <ns>:{<provider>/<model>}:domains
-- KEYS[3]    event stream   <ns>:{<provider>/<model>}:events
-- KEYS[3+i]  domain hash of the i-th domain the caller read from the index
--
-- ARGV[1]    now               seconds, or '' for the server's TIME
-- ARGV[2]    alias
-- ARGV[3]    max_parallel      the alias's max_parallel_requests
-- ARGV[4]    idle_ms           idle expiry in milliseconds (0: never expire)
-- ARGV[5]    events_maxlen     the event stream's approximate MAXLEN
-- ARGV[5+i]  name of the domain in KEYS[3+i]
--
-- Reply: {'ok', effective_max, events}
--        {'stale', names...} when the index holds domains the caller did not
--        pass (one was created meanwhile): call again with these names.
-- Errors: 'AIMD_CORRUPT <key> field <name> holds <value>'

local now = clock(ARGV[1])
local alias, max_parallel = ARGV[2], ARGV[3]
local idle_ms, events_maxlen = tonumber(ARGV[4]), ARGV[5]
local alias_field = 'alias:' .. alias

local passed = {}
for i = 6, #ARGV do passed[ARGV[i]] = true end
local members = redis.call('SMEMBERS', KEYS[2])
for _, name in ipairs(members) do
  if not passed[name] then
    table.insert(members, 1, 'stale')
    return members
  end
end

local flat = redis.call('HGETALL', KEYS[1])
local old_max = nil
local emax = tonumber(max_parallel)
for i = 1, #flat, 2 do
  local field, raw = flat[i], flat[i + 1]
  if field == 'effective_max' or (string.sub(field, 1, 6) == 'alias:' and field ~= alias_field) then
    local v, err = parse(KEYS[1], field, raw, 'pos')
    if not v then return redis.error_reply(err) end
    if field == 'effective_max' then old_max = v else emax = math.min(emax, v) end
  end
end

local domains = {}
for i = 4, #KEYS do
  local d, err = load_domain(KEYS[i])
  if err then return redis.error_reply(err) end
  domains[i] = d
end

redis.call('HSET', KEYS[1], alias_field, max_parallel, 'effective_max', fmt(emax))
if old_max ~= emax then emit('*', 'effective_max', old_max or 0, emax) end
for i = 4, #KEYS do
  local name, d = ARGV[i + 2], domains[i]
  if not d then
    redis.call('SREM', KEYS[2], name)
  elseif d.current_limit > emax then
    emit(name, 'clamp', d.current_limit, emax)
    redis.call('HSET', KEYS[i], 'current_limit', fmt(emax))
  end
  expire_new(idle_ms, KEYS[i])
end
local flat_events = flush_events(KEYS[3], now, events_maxlen, idle_ms)
for i = 1, 3 do expire_new(idle_ms, KEYS[i]) end
return {'ok', emax, flat_events}
