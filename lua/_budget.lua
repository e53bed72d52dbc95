-- The budgets: requests and tokens per minute, shared by every domain of a
-- model. Each is a token bucket that holds one minute's worth and refills
-- continuously (a full minute's budget may go at once, as providers allow).
-- A grant takes a slot, one request and the lease's tokens together, or
-- nothing; the release settles the tokens the request really used.
--
-- Where the numbers live (all under the model's hash tag):
--   cap hash     rpm, tpm                   the budget in force: the least of
--                                            the registered and the heard one
--                rpm:<alias>, tpm:<alias>   what each alias registered
--                rpm_registered, tpm_registered   the least over the aliases
--                rpm_heard, tpm_heard       the limit the provider's headers gave
--   budget hash  requests, tokens           what is left (tokens may run below 0
--                                            when a request used more than it
--                                            reserved: a debt the refill pays)
--                refilled_at                when they were last brought up to date
-- A model with neither rpm nor tpm costs nothing here beyond one HMGET.
--
-- The table `budget` is declared in _prelude.lua, whose queue helpers use it.

-- A lease id ending in '.t<n>' reserves n tokens (see Core.new_lease_id): the
-- queue, the hand-over and the release read a waiter's reservation from its
-- id, without a key of their own.
function budget.tokens_of(id)
  return tonumber(string.match(id, '%.t(%d+)$')) or 0
end

local CAP_FIELDS = {'effective_max', 'rpm', 'tpm', 'rpm_registered', 'tpm_registered', 'rpm_heard', 'tpm_heard'}

-- The cap hash's numbers: effective_max (nil when nobody registered the
-- model), and the budget's limits (nil when not set); or nil and the error.
function budget.read_cap(cap_key)
  local raw = redis.call('HMGET', cap_key, unpack(CAP_FIELDS))
  local out = {}
  for i = 1, #CAP_FIELDS do
    if raw[i] then
      local v, err = parse(cap_key, CAP_FIELDS[i], raw[i], 'pos')
      if not v then return nil, err end
      out[CAP_FIELDS[i]] = v
    end
  end
  return out
end

local function level(key, name, text)
  if not text then return nil end
  local v = tonumber(text)
  if v and v == v and v >= -MAX_COUNT and v <= MAX_COUNT and string.find(text, '^%-?[%d.]+[eE]?[+-]?%d*$') then
    return v
  end
  return nil, 'AIMD_CORRUPT ' .. key .. ' field ' .. name .. ' holds "' .. text .. '"'
end

-- The model's buckets brought up to now, or nil when it has no budget. With
-- `always`, the budget hash is read (and validated) even so, and returned as
-- read: a caller that may set a budget later in the call validates before it
-- writes, then calls budget.limits.
function budget.load(cap, key, now, always)
  if not always and not cap.rpm and not cap.tpm then return nil end
  local raw = redis.call('HMGET', key, 'requests', 'tokens', 'refilled_at')
  local requests, err = level(key, 'requests', raw[1])
  if err then return nil, err end
  local tokens
  tokens, err = level(key, 'tokens', raw[2])
  if err then return nil, err end
  local at = now
  if raw[3] then
    at, err = parse(key, 'refilled_at', raw[3], 'time')
    if not at then return nil, err end
  end
  local b = {key = key, requests = requests, tokens = tokens, at = at, dirty = not raw[3], new = not raw[3]}
  if always then return b end
  return budget.limits(b, cap, now)
end

-- Applies the limits in force (cap.rpm, cap.tpm) and refills for the time
-- since the last call (none backwards: an injected clock may lag the last
-- writer's), capped at a minute's worth. A bucket never seen starts full.
-- Returns b, or nil when no budget is in force.
function budget.limits(b, cap, now)
  if not b or (not cap.rpm and not cap.tpm) then return nil end
  b.rpm, b.tpm = cap.rpm, cap.tpm
  b.requests, b.tokens = b.requests or b.rpm or 0, b.tokens or b.tpm or 0
  local elapsed = math.max(0, now - b.at) / 60
  if b.rpm then b.requests = math.min(b.rpm, b.requests + b.rpm * elapsed) end
  if b.tpm then b.tokens = math.min(b.tpm, b.tokens + b.tpm * elapsed) end
  if now > b.at then b.at, b.dirty = now, true end
  return b
end

-- Whether a request of `tokens` could ever fit: not when it is larger than a
-- whole minute's budget.
function budget.fits(b, tokens)
  return not (b and b.tpm and tokens > b.tpm)
end

-- Seconds until one request of `tokens` fits; 0 when it fits now (to within
-- a millionth: refills are sums of fractions).
function budget.wait(b, tokens)
  if not b then return 0 end
  local wait = 0
  if b.rpm and b.requests < 1 - 1e-6 then wait = (1 - b.requests) * 60 / b.rpm end
  if b.tpm and b.tokens < tokens - 1e-6 then wait = math.max(wait, (tokens - b.tokens) * 60 / b.tpm) end
  return wait
end

function budget.take(b, tokens)
  if not b then return end
  if b.rpm then b.requests = b.requests - 1 end
  if b.tpm then b.tokens = b.tokens - tokens end
  b.dirty = true
end

-- A released request's reservation settled: `requests` and `tokens` are what
-- goes back to the buckets (negative: charged).
function budget.give(b, requests, tokens)
  if not b then return end
  if b.rpm then b.requests = math.min(b.rpm, b.requests + requests) end
  if b.tpm then b.tokens = math.max(-b.tpm, math.min(b.tpm, b.tokens + tokens)) end
  b.dirty = true
end

-- What the provider said is left: a bucket that thinks more is left is
-- corrected down (never up: the provider's count lags the requests in
-- flight). A correction of more than a twentieth of the budget is an event.
function budget.heard_left(domain, b, requests, tokens)
  if not b then return end
  for _, f in ipairs({{'requests', 'rpm', requests}, {'tokens', 'tpm', tokens}}) do
    local name, limit, left = f[1], b[f[2]], f[3]
    if limit and left and left < b[name] then
      if b[name] - left > limit / 20 then emit(domain, name .. '_corrected', b[name], left) end
      b[name], b.dirty = left, true
    end
  end
end

function budget.save(b, idle_ms)
  if b and b.dirty then
    redis.call('HSET', b.key, 'requests', fmt(b.requests), 'tokens', fmt(b.tokens), 'refilled_at', fmt(b.at))
    if b.new then expire_new(idle_ms, b.key) end
  end
end

-- The budget in force from what the aliases registered and what the provider
-- said: the least of the two. Writes it (an event when it changed); returns
-- whether it changed.
function budget.settle_limits(cap_key, cap)
  local changed = false
  for _, name in ipairs({'rpm', 'tpm'}) do
    local registered, heard = cap[name .. '_registered'], cap[name .. '_heard']
    local limit = registered and heard and math.min(registered, heard) or registered or heard
    if limit ~= cap[name] then
      emit('*', name, cap[name] or 0, limit or 0)
      if limit then redis.call('HSET', cap_key, name, fmt(limit)) else redis.call('HDEL', cap_key, name) end
      cap[name], changed = limit, true
    end
  end
  return changed
end
