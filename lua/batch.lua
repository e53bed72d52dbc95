-- batch: everything one process's agent has for one model since its last
-- call, in arrival order: outcomes and give-backs, acks of slots handed to
-- it, 'try' acquires, and per domain how many of its callers wait (with the
-- lease ids it chose for the oldest of them).
--
-- KEYS[1]       cap hash       <ns>:{<provider>/<model>}:cap
-- KEYS[2]       domain index   <ns>:{<provider>/<model>}:domains
-- KEYS[3]       event stream   <ns>:{<provider>/<model>}:events
-- KEYS[4]       budget hash    <ns>:{<provider>/<model>}:cap:budget
-- KEYS[8i-3..8i+4] for domain i: its hash <ns>:{<provider>/<model>}:<domain>, and its
--               :leases, :queue, :beats, :groups, :want, :handed and :tokens keys
--               (see acquire.lua and _queue.lua)
--
-- ARGV[1]  now               seconds, or '' for the server's TIME
-- ARGV[2]  client            the agent's id: its queue entry and wake channel
-- ARGV[3]  lease_ttl         seconds a lease lasts unless renewed
-- ARGV[4]  claim_ttl         seconds a slot handed to another agent or waiter lasts until claimed
-- ARGV[5]  publish           'PUBLISH', or 'SPUBLISH' on a cluster
-- ARGV[6]  beat              seconds from now the agent's entry lives without another batch
-- ARGV[7]  items             JSON, one object per domain i:
--            name     the domain's name
--            rel      outcomes, in order: [lease id, outcome, retry_after, granted_at,
--                     tokens used, heard rpm, heard tpm, heard requests left, heard
--                     tokens left, ttfb] ('' where unknown, and trailing unknowns left
--                     out; as release.lua takes them)
--            ack      ids of slots handed to this agent that it has taken up: each
--                     now lasts a lease ttl
--            try      'try' acquires: [lease id, tokens]
--            want     how many of the agent's callers wait for a slot (an absolute
--                     count: the entry is set to it, less the slots handed and not
--                     yet acked)
--            ids      lease ids for the oldest of them, in order: [lease id, tokens]
--            tokens   what each slot handed to the agent reserves
--            group    the group its callers wait in (absent: the default group);
--                     the agent's entry is '<client>~<group>', and the lease ids
--                     are '<client>~<group>.<token>'. A domain may come in several
--                     items, one per group.
--            weight   the group's weight (absent: 1)
--
-- Per domain: outcomes first (their freed slots go to the queue in order),
-- then acks, then the agent's entry is set and the queue served in tag
-- order (the agent's own slots granted to its ids), then the 'try's, which
-- never pass a waiter. Each item is all or nothing (slot and budget), as
-- acquire.lua and release.lua do it one at a time: the same functions.
--
-- Reply (JSON): {registered, at, events, domains}; per domain in order:
--   rel      per outcome, whether it gave the slot back
--   ack      per ack, the lease's new expiry, or 0 when the slot went on
--   got      [lease id, expiry] granted to the agent's ids
--   handed   [lease id, expiry] handed to the agent and not acked (a wake-up
--            may have been lost): ack or give back each
--   try      per 'try': [status, value] as acquire.lua's
--   oversize ids whose tokens exceed the model's tokens per minute (never granted)
--   wait     when the agent's entry is first in line: seconds until it should
--            send again (the cooldown ends or a lease expires); else 0
--   more     true when a slot was free for the agent's entry but it sent no more
--            lease ids: it should send again at once
--   state    the domain's public fields
-- Errors: 'AIMD_NOT_REGISTERED <cap key>' (when anything is to be acquired),
--         'AIMD_CORRUPT <key> field <name> holds <value>'

local now = clock(ARGV[1])
local client, lease_ttl, claim_ttl, publish = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
local beat_deadline = now + tonumber(ARGV[6])
local items = cjson.decode(ARGV[7])

local heard, learning = {}, false
local acquiring = false
for _, item in ipairs(items) do
  for _, r in ipairs(item.rel) do
    for j, name in ipairs({'rpm', 'tpm'}) do
      local v = tonumber(r[5 + j])
      if v and v == v and v >= 1 and v % 1 == 0 and v <= MAX_COUNT then heard[name], learning = v, true end
    end
  end
  if #item.try > 0 or item.want > 0 then acquiring = true end
end

local m, err = load_model(KEYS[1], now, learning)
if err then return redis.error_reply(err) end
local registered = m.emax ~= nil
m.idle_ms = lease_floor(m.idle_ms, lease_ttl)
if acquiring and not registered then return redis.error_reply('AIMD_NOT_REGISTERED ' .. KEYS[1]) end
local b
b, err = budget.load(m, KEYS[4], now, learning)
if err then return redis.error_reply(err) end

-- Every domain read and judged before the first write; the items of one
-- domain (one per group) share it.
local doms, by_name = {}, {}
for i, item in ipairs(items) do
  local base = 8 * i - 3
  local dom = by_name[item.name]
  if not dom then
    local k = {cap = KEYS[1], domain = KEYS[base], leases = KEYS[base + 1], index = KEYS[2], events = KEYS[3],
               queue = KEYS[base + 2], beats = KEYS[base + 3], groups = KEYS[base + 4], want = KEYS[base + 5],
               handed = KEYS[base + 6], budget = KEYS[4], tokens = KEYS[base + 7]}
    local d
    d, err = load_domain(k.domain)
    if err then return redis.error_reply(err) end
    dom = {k = k, d = d}
    by_name[item.name] = dom
  end
  doms[i] = dom
end

if registered and learning then budget.heard_limits(KEYS[1], m, heard) end
b = budget.limits(b, m, now)

local out, publishing = {}, {}
for i, item in ipairs(items) do
  local domain, k, d = item.name, doms[i].k, doms[i].d
  local res = {rel = {}, ack = {}, got = {}, try = {}, oversize = {}, wait = 0}
  -- The agent's callers and 'try's whose tokens could never fit are refused
  -- (and create nothing).
  local own, tries = {ids = {}, tokens = {}, used = 0, got = res.got}, {}
  for _, pair in ipairs(item.ids) do
    local tokens = tonumber(pair[2])
    if budget.fits(b, tokens) then
      own.ids[#own.ids + 1], own.tokens[#own.tokens + 1] = pair[1], tokens
    else
      res.oversize[#res.oversize + 1] = pair[1]
    end
  end
  for j, pair in ipairs(item.try) do
    if budget.fits(b, tonumber(pair[2])) then tries[#tries + 1] = j else res.try[j] = {'oversize', b.tpm} end
  end
  local wants = item.want > #res.oversize or #tries > 0
  if not d and wants then
    d = create_domain(domain, k, now, m)
    doms[i].d = d
  end
  local q = queue_of(domain, k, publish, m.idle_ms, claim_ttl, b)
  if d then
    count_leases(domain, d, k, now, b, m)
  end

  for j, r in ipairs(item.rel) do
    res.rel[j] = give_back(domain, d, q, m, now, lease_ttl, r[1], {
      outcome = r[2], retry_after = tonumber(r[3]), granted_at = tonumber(r[4]), used = tonumber(r[5]),
      requests_left = tonumber(r[8]), tokens_left = tonumber(r[9]), ttfb = tonumber(r[10])})
  end

  local expiry_text = fmt(now + lease_ttl)
  if #item.ack > 0 then
    unhand(q, item.ack)
    local renewed = {}
    for j, id in ipairs(item.ack) do
      local score = tonumber(redis.call('ZSCORE', k.leases, id))
      if score and score > now then
        renewed[#renewed + 1], renewed[#renewed + 2] = expiry_text, id
        res.ack[j] = now + lease_ttl
      else
        res.ack[j] = 0
      end
    end
    if #renewed > 0 then redis.call('ZADD', k.leases, 'XX', unpack(renewed)) end
  end

  if d then
    if wants then rules.on_acquire(domain, d, now, m) end
    if redis.call('ZCARD', k.queue) > 0 then reap_waiters(q, now) end
    local group = item.group ~= cjson.null and item.group or nil
    local entry = group and client .. '~' .. group or client
    res.handed = handed_to(q, entry, now)
    local want = math.max(0, item.want - #res.oversize - #res.handed)
    -- Nobody waits: the agent's oldest callers take what is free, as newcomers do.
    if redis.call('ZCARD', k.queue) == 0 then
      while want > 0 and own.used < #own.ids do
        local id, tokens = own.ids[own.used + 1], own.tokens[own.used + 1]
        local status, value = try_take(d, k, b, id, tokens, now, lease_ttl, m.idle_ms)
        if status == 'abandoned' then
          own.used = own.used + 1
        elseif status == 'granted' then
          own.used, want = own.used + 1, want - 1
          res.got[#res.got + 1] = {id, tonumber(value)}
        else
          break
        end
      end
    end
    set_want(q, client, group, tonumber(item.weight) or 1, want, beat_deadline, tonumber(item.tokens) or 0)
    local _, claim = promote(q, d, now, lease_ttl, entry, own)
    res.more = own.starved
    publishing[#publishing + 1] = {q, d, claim, #item.rel > 0}

    for _, j in ipairs(tries) do
      local id, tokens = item.try[j][1], tonumber(item.try[j][2])
      local status, value
      -- (The queue was served just now: a reserved group's slots still
      -- free are nobody else's.)
      if redis.call('ZCARD', k.queue) == 0 or (d.reserved and d.reserved[group]) then
        status, value = try_take(d, k, b, id, tokens, now, lease_ttl, m.idle_ms)
        value = tonumber(value)
      elseif now < d.blocked_until then
        status, value = 'cooldown', d.blocked_until - now
      else
        status, value = 'at_capacity', 0
      end
      res.try[j] = {status, value}
    end

    if redis.call('HGET', k.want, entry) then res.wait = first_in_line_wait(q, d, entry, tonumber(item.tokens) or 0, now) end
    d.waiters = waiting_count(q)
    save_domain(k.domain, d)
  end
  for name, list in pairs(res) do  -- cjson would write an empty list as an object
    if type(list) == 'table' and #list == 0 then res[name] = nil end
  end
  out[i] = cjson.encode(res)
  if d then out[i] = string.sub(out[i], 1, -2) .. ',"state":' .. state_json(d) .. '}' end
end

budget.save(b, m.idle_ms)
for _, p in ipairs(publishing) do
  publish_handoffs(p[1], p[2], p[3])
  if p[4] then notify_head_of_cooldown(p[1], p[2], now) end
end
flush_events(KEYS[3], now, m.idle_ms)
for i = 1, #items do
  local k = doms[i].k
  touch(m.idle_ms, k.domain, k.cap, k.leases, k.index, k.events, k.queue, k.beats, k.groups, k.want, k.handed,
    b and k.budget, b and k.tokens)
end
return '{"registered":' .. tostring(registered) .. ',"at":' .. fmt(now) .. ',"domains":[' .. table.concat(out, ',') ..
  ']' .. events_json() .. '}'
