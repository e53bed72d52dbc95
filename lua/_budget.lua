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
--                claim, claim_tokens,       a queue's first waiter short of budget,
--                claim_until                what it needs and until when (see
--                                            budget.claim)
-- A model with neither rpm nor tpm costs nothing here beyond one HMGET.
--
-- A lease's reservation is kept in its domain's tokens hash (lease or waiter
-- id -> tokens), written only for models with a token budget.

local budget = {}

local function level(key, name, text)
  if not text then return nil end
  local v = tonumber(text)
  if v and v == v and v >= -MAX_COUNT and v <= MAX_COUNT and string.find(text, '^%-?[%d.]+[eE]?[+-]?%d*$') then
    return v
  end
  return nil, 'AIMD_CORRUPT ' .. key .. ' field ' .. name .. ' holds "' .. text .. '"'
end

local BUDGET_FIELDS = {'requests', 'tokens', 'refilled_at', 'claim', 'claim_tokens', 'claim_until'}

-- The model's buckets brought up to now, or nil when it has no budget. With
-- `always`, the budget hash is read (and validated) even so, and returned as
-- read: a caller that may set a budget later in the call validates before it
-- writes, then calls budget.limits.
function budget.load(cap, key, now, always)
  if not always and not cap.rpm and not cap.tpm then return nil end
  local raw = redis.call('HMGET', key, unpack(BUDGET_FIELDS))
  local requests, err = level(key, 'requests', raw[1])
  if err then return nil, err end
  local tokens
  tokens, err = level(key, 'tokens', raw[2])
  if err then return nil, err end
  local at, claim_tokens, claim_until = now, 0, 0
  if raw[3] then
    at, err = parse(key, 'refilled_at', raw[3], 'time')
    if not at then return nil, err end
  end
  if raw[4] then
    claim_tokens, err = parse(key, 'claim_tokens', raw[5] or nil, 'count')
    if not claim_tokens then return nil, err end
    claim_until, err = parse(key, 'claim_until', raw[6] or nil, 'time')
    if not claim_until then return nil, err end
  end
  local b = {key = key, requests = requests, tokens = tokens, at = math.min(at, now), new = not raw[3],
             dirty = not raw[3], claimed = raw[4] ~= false}
  -- A claim lasts as long as its waiter's heartbeat.
  if raw[4] and claim_until > now then b.claim = {id = raw[4], tokens = claim_tokens, ends = claim_until} end
  if always then return b end
  return budget.limits(b, cap, now)
end

-- Applies the limits in force (cap.rpm, cap.tpm) and refills for the time
-- since the last call (none backwards: an injected clock may lag the last
-- writer's), capped at a minute's worth (and a debt at one). A bucket never
-- seen starts full. Returns b, or nil when no budget is in force.
function budget.limits(b, cap, now)
  if not b or (not cap.rpm and not cap.tpm) then return nil end
  b.rpm, b.tpm = cap.rpm, cap.tpm
  local elapsed = math.max(0, now - b.at) / 60
  if b.rpm then b.requests = math.max(-b.rpm, math.min(b.rpm, (b.requests or b.rpm) + b.rpm * elapsed)) end
  if b.tpm then b.tokens = math.max(-b.tpm, math.min(b.tpm, (b.tokens or b.tpm) + b.tpm * elapsed)) end
  if now > b.at then b.at, b.dirty = now, true end
  return b
end

-- Whether a request of `tokens` could ever fit: not when they are more than a
-- whole minute's budget.
function budget.fits(b, tokens)
  return not (b and b.tpm and tokens > b.tpm)
end

-- Seconds until lease id's request of `tokens` fits; 0 when it fits now (to
-- within a millionth: refills are sums of fractions). What a waiter of
-- another domain has claimed (see budget.claim) is not there to take.
function budget.wait(b, id, tokens)
  if not b then return 0 end
  local requests = 1
  if b.claim and b.claim.id ~= id then requests, tokens = 2, tokens + b.claim.tokens end
  local wait = 0
  if b.rpm and b.requests < requests - 1e-6 then wait = (requests - b.requests) * 60 / b.rpm end
  if b.tpm and b.tokens < tokens - 1e-6 then wait = math.max(wait, (tokens - b.tokens) * 60 / b.tpm) end
  return wait
end

-- A domain's first waiter short of budget claims what it needs until its
-- heartbeat lapses: the budget is the model's, and without the claim the
-- newcomers of its other domains (whose queues are empty) would take every
-- refill before it. One claim at a time; the first to ask holds it.
function budget.claim(b, id, tokens, ends)
  if b and (not b.claim or b.claim.id == id) then
    b.claim, b.dirty = {id = id, tokens = tokens, ends = ends}, true
  end
end

-- Takes lease id's request and tokens (its claim, if it held one, is done).
function budget.take(b, id, tokens)
  if not b then return end
  if b.rpm then b.requests = b.requests - 1 end
  if b.tpm then b.tokens = b.tokens - tokens end
  budget.unclaim(b, id)
  b.dirty = true
end

function budget.unclaim(b, id)
  if b and b.claim and b.claim.id == id then b.claim, b.dirty = nil, true end
end

-- A released request's reservation settled: `requests` and `tokens` are what
-- goes back to the buckets (negative: charged).
function budget.give(b, requests, tokens)
  if not b then return end
  if b.rpm then b.requests = math.min(b.rpm, b.requests + requests) end
  if b.tpm then b.tokens = math.max(-b.tpm, math.min(b.tpm, b.tokens + tokens)) end
  b.dirty = true
end

-- A reported lease's reservation settled by its outcome (only when this
-- report released it: a resend settles nothing twice), then corrected by
-- what the provider said is left. A success gives back what it reserved
-- beyond what it used, or is charged the excess; a 429 gives its tokens
-- back (a refused request used none) and keeps its request (providers count
-- refused requests); a failure keeps both (it may have been served in
-- part); a give-back ('abandon') returns both.
function budget.settle(domain, b, released, outcome, reserved, used, requests_left, tokens_left)
  if released then
    local settled = reserved or 0
    if outcome == 'abandon' then
      budget.give(b, 1, settled)
    elseif outcome == 'rate_limited' then
      budget.give(b, 0, settled)
      -- The provider refused: whatever the buckets thought, it had nothing
      -- left (unless its headers say what it had). Buckets that trusted
      -- estimates too low would otherwise keep admitting what it refuses.
      requests_left, tokens_left = requests_left or 0, tokens_left or 0
    elseif outcome == 'success' and used and reserved then
      budget.give(b, 0, reserved - used)
    end
  end
  budget.heard_left(domain, b, requests_left, tokens_left)
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

-- Writes the buckets in force (a bucket without a limit is deleted, so that
-- one set later starts full) and the claim.
function budget.save(b, idle_ms)
  if not (b and b.dirty) then return end
  local set, gone = {'refilled_at', fmt(b.at)}, {}
  for _, f in ipairs({{'requests', b.rpm}, {'tokens', b.tpm}}) do
    if f[2] then
      set[#set + 1], set[#set + 2] = f[1], fmt(b[f[1]])
    else
      gone[#gone + 1] = f[1]
    end
  end
  if b.claim then
    set[#set + 1], set[#set + 2] = 'claim', b.claim.id
    set[#set + 1], set[#set + 2] = 'claim_tokens', fmt(b.claim.tokens)
    set[#set + 1], set[#set + 2] = 'claim_until', fmt(b.claim.ends)
  elseif b.claimed then
    gone[#gone + 1], gone[#gone + 2], gone[#gone + 3] = 'claim', 'claim_tokens', 'claim_until'
  end
  redis.call('HSET', b.key, unpack(set))
  if #gone > 0 then redis.call('HDEL', b.key, unpack(gone)) end
  if b.new then expire_new(idle_ms, b.key) end
end

-- The limits the provider's headers gave (heard.rpm, heard.tpm; nil for
-- what they did not say), recorded, and the budget in force made anew.
function budget.heard_limits(cap_key, cap, heard)
  for _, name in ipairs({'rpm', 'tpm'}) do
    local field = name .. '_heard'
    if heard[name] and heard[name] ~= cap[field] then
      redis.call('HSET', cap_key, field, fmt(heard[name]))
      cap[field] = heard[name]
    end
  end
  budget.settle_limits(cap_key, cap)
end

-- The budget in force from what the aliases registered and what the provider
-- said: the least of the two. Writes it, and an event when it changed.
function budget.settle_limits(cap_key, cap)
  for _, name in ipairs({'rpm', 'tpm'}) do
    local registered, heard = cap[name .. '_registered'], cap[name .. '_heard']
    local limit = registered and heard and math.min(registered, heard) or registered or heard
    if limit ~= cap[name] then
      emit('*', name, cap[name] or 0, limit or 0)
      if limit then redis.call('HSET', cap_key, name, fmt(limit)) else redis.call('HDEL', cap_key, name) end
      cap[name] = limit
    end
  end
end

-- == reservations ===========================================================
-- A lease's (or a queued waiter's) tokens, in its domain's tokens hash:
-- written only while the model has a token budget (a lease granted without
-- one has nothing to settle).

function budget.reserve(b, tokens_key, id, tokens, idle_ms)
  if b and b.tpm then
    if redis.call('HSET', tokens_key, id, tokens) == 1 and redis.call('HLEN', tokens_key) == 1 then
      expire_new(idle_ms, tokens_key)
    end
  end
end

-- The reservation of id, or nil when it has none; `forget` drops it.
function budget.reserved(b, tokens_key, id, forget)
  if not b then return nil end
  local n = redis.call('HGET', tokens_key, id)
  if n and forget then redis.call('HDEL', tokens_key, id) end
  return tonumber(n)
end

function budget.forget(b, tokens_key, ids)
  if b and #ids > 0 then redis.call('HDEL', tokens_key, unpack(ids)) end
end
