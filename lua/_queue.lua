-- The wait queue of a domain: the waiters of every process, in the order of
-- start-time fair queuing across their groups. Every waiting request has a
-- virtual start tag: a group's next request starts where its last one
-- finished, or at the virtual time V (the start tag of the last request
-- served) if that is later, and finishes 1/weight after its start; the
-- queue is served in tag order. Within a group that is arrival order; across
-- groups, while all wait, each gets slots in proportion to its weight; a
-- group that starts waiting joins at V, next in line, but not ahead of a
-- whole backlog either. The groups zset keeps each waiting group's finish
-- tag ('default' for callers without a group) and V (member '~v'); it goes
-- when the queue empties, and the tags start again from 0.
--
-- An entry of the queue zset, scored by the start tag of its next request,
-- is either
--   * a process's agent for one group: member '<client>' (its wake channel's
--     name) for the default group, '<client>~<group>' for another, standing
--     for all of the process's callers of that group. Its want hash field
--     holds what it waits for, 'total=start:count,start:count,...' (at weight
--     1; 'totalxweight=...' otherwise), the segments oldest first, the
--     requests of a segment starting at start, start + 1/weight, ...: a
--     segment grows while no other entry of the group took tags after it, so
--     the order holds to within one batch. The common changes (the same
--     count again, more at the end, slots off the oldest segment) touch the
--     text at its ends, never parsing it whole: a process with many waiters
--     has many segments. The field '*' is the total wanted by all agents.
--     Slots handed to it get ids '<entry>.h<n>' and are listed in the handed
--     hash (field <entry>: 'id,id,...') until the agent acks them, so a lost
--     wake-up is found by its next batch;
--   * a single waiting call (acquire.lua's 'wait' mode): member
--     '<client>.<token>' or '<client>~<group>.<token>', which doubles as the
--     lease id it gets.
-- A slot handed to a waiter lasts claim_ttl seconds until the waiter claims
-- it (re-checking, or acking it): a waiter that died in the queue does not
-- keep it for a whole lease ttl.

-- The model's wake channels are named after its cap key: '<ns>:{<p>/<m>}:wake:<client>'.
local function queue_of(domain, k, publish, idle_ms, claim_ttl, b)
  return {domain = domain, k = k, prefix = string.sub(k.cap, 1, -4) .. 'wake:', publish = publish,
          idle_ms = idle_ms, claim_ttl = claim_ttl, budget = b, handed = {}, handed_to = {}, agents = {}}
end

-- Tags are sums of 1/weight: equal within rounding, and never as far
-- apart as a step (at least 1/1000) however large the tags grow.
local function same_tag(a, b)
  return math.abs(a - b) <= math.min(1e-4, 1e-9 * math.max(1, math.abs(a)))
end

-- The finish tag of group g's last queued request (nil: none queued).
local function finish_of(q, g)
  return tonumber(redis.call('ZSCORE', q.k.groups, g or 'default'))
end

local function set_finish(q, g, tag)
  if redis.call('ZADD', q.k.groups, tag, g or 'default') == 1 then expire_new(q.idle_ms, q.k.groups) end
end

-- Whether an entry's segment {start, count} at weight ends at group g's
-- finish tag: nobody of the group took tags after it, which it may then
-- give back.
local function ends_group(q, g, seg, weight)
  return same_tag(seg[1] + seg[2] / weight, finish_of(q, g) or -1)
end

-- Tags as text, to the last digit: a tag read back is the tag written.
local function tag_text(tag)
  return string.format('%.17g', tag)
end

-- The start tag of n requests of group g joining the queue at 1/weight each
-- (the group's finish tag moves past them). V, the virtual time, is the
-- start tag of the last request served in tag order (the member '~v' of the
-- groups zset), or the least start tag queued if that is less: a group that
-- starts waiting goes next, beside the request just served. Groups whose
-- last request finished before V have nobody waiting: they go, as if they
-- had never waited.
local function take_tags(q, g, n, step)
  local head = redis.call('ZRANGE', q.k.queue, 0, 0, 'WITHSCORES')
  local start = 0
  if head[2] then
    local v = math.min(tonumber(head[2]), tonumber(redis.call('ZSCORE', q.k.groups, '~v')) or math.huge)
    local before_v = '(' .. tag_text(v)
    redis.call('ZREMRANGEBYSCORE', q.k.groups, '-inf', before_v)
    start = math.max(v, finish_of(q, g) or 0)
  else  -- nobody waits: the tags start again
    redis.call('DEL', q.k.groups)
  end
  set_finish(q, g, start + n * step)
  return start
end

-- An entry went: with the last, the groups go too.
local function left(q)
  if redis.call('ZCARD', q.k.queue) == 0 then redis.call('DEL', q.k.groups) end
end

-- An agent's want text: its total, weight and segments' text.
local function parse_want(text)
  local total, w, segs = string.match(text, '^(%d+)x?([^=]*)=(.*)$')
  return tonumber(total), tonumber(w) or 1, segs
end

-- Drops the reservations of waiters that left, whatever the budget.
local function forget_waiters(q, ids)
  if #ids > 0 then redis.call('HDEL', q.k.tokens, unpack(ids)) end
end

-- An agent's segments, {{start, count}, ...} oldest first, and its weight;
-- nil when member is no agent's entry.
local function segments_of(q, member)
  local text = redis.call('HGET', q.k.want, member)
  if not text then return nil end
  local segs = {}
  local _, weight, rest = parse_want(text)
  for t, c in string.gmatch(rest, '([^:,]+):(%d+)') do
    segs[#segs + 1] = {tonumber(t), tonumber(c)}
  end
  return segs, weight
end

-- Writes an agent's want field: its total, weight and its segments' text
-- (as 'start:count,...'), moving the total wanted by all agents by delta.
local function write_want(q, member, total, weight, segs_text, delta)
  local k = q.k
  if delta ~= 0 then redis.call('HINCRBY', k.want, '*', delta) end
  local value = total .. (weight ~= 1 and 'x' .. fmt(weight) or '') .. '=' .. segs_text
  if redis.call('HSET', k.want, member, value) == 1 then
    expire_new(q.idle_ms, k.want)
    expire_new(q.idle_ms, k.queue)
    expire_new(q.idle_ms, k.beats)
  end
end

-- Writes an agent's segments (or removes its entry when none are left) and
-- moves the total wanted by delta.
local function save_segments(q, member, segs, weight, delta, beat_deadline)
  local k = q.k
  if delta ~= 0 then redis.call('HINCRBY', k.want, '*', delta) end
  if #segs == 0 then
    redis.call('HDEL', k.want, member)
    redis.call('ZREM', k.queue, member)
    redis.call('ZREM', k.beats, member)
    forget_waiters(q, {member})
    left(q)
    return
  end
  local parts, total = {}, 0
  for i, seg in ipairs(segs) do
    parts[i], total = tag_text(seg[1]) .. ':' .. seg[2], total + seg[2]
  end
  write_want(q, member, total, weight, table.concat(parts, ','), 0)
  redis.call('ZADD', k.queue, segs[1][1], member)
  if beat_deadline then redis.call('ZADD', k.beats, beat_deadline, member) end
end

-- Sets how many slots agent `client` waits for in group g (nil: the
-- default) at weight (an absolute count: a resent batch changes nothing),
-- with its heartbeat deadline and the tokens each slot handed to it
-- reserves. More than before: the last segment grows while no other entry of
-- the group took tags after it, else a new segment is appended. Fewer: the
-- newest segments shrink. A new weight applies to the tags taken from then on.
local function set_want(q, client, g, weight, n, beat_deadline, tokens)
  local k = q.k
  local member = g and client .. '~' .. g or client
  if n > 0 then budget.reserve(q.budget, k.tokens, member, tokens, q.idle_ms) end
  local text = redis.call('HGET', k.want, member)
  local total, old_weight = 0, weight
  if text then total, old_weight = parse_want(text) end
  -- (A weight is compared as stored: to 14 digits.)
  if n == total and fmt(weight) == fmt(old_weight) then  -- as before: a heartbeat (or nothing wanted, and no entry)
    if text and beat_deadline then redis.call('ZADD', k.beats, beat_deadline, member) end
    return member
  end
  local step = 1 / weight
  if not text then  -- a new entry: one segment
    save_segments(q, member, {{take_tags(q, g, n, step), n}}, weight, n, beat_deadline)
    return member
  end
  if n <= total then  -- fewer (or a new weight): the newest segments shrink
    local segs, drop = segments_of(q, member), total - n
    local last = segs[#segs]
    local last_start = last[1]
    local was_last = ends_group(q, g, last, old_weight)
    while drop > 0 do
      last = segs[#segs]
      local cut = math.min(drop, last[2])
      last[2], drop = last[2] - cut, drop - cut
      if last[2] == 0 then segs[#segs] = nil end
    end
    -- Tags the group no longer needs are given back if nobody took later
    -- ones: those of the last segment (the group's others may hold tags
    -- between the earlier ones), also when the entry goes.
    if was_last then
      local kept = #segs > 0 and segs[#segs][1] + segs[#segs][2] * step or last_start
      set_finish(q, g, math.max(kept, last_start))
    end
    save_segments(q, member, segs, weight, n - total, beat_deadline)
    return member
  end
  -- More: the last segment starts after the last comma (or the '='); a
  -- pattern that looks for it from the front backtracks at every digit.
  local from = string.find(text, '=', 1, true) + 1
  local last = string.match(text, '^.*,()') or from
  local before, last_t, last_c = string.sub(text, from, last - 1), string.match(text, '^([^:]+):(%d+)$', last)
  local start, count, finish = tonumber(last_t), tonumber(last_c), finish_of(q, g)
  local segs_text
  if finish and same_tag(start + count * step, finish) then
    segs_text = before .. last_t .. ':' .. (count + n - total)
    set_finish(q, g, start + (count + n - total) * step)
  else
    segs_text = before .. last_t .. ':' .. last_c .. ',' .. tag_text(take_tags(q, g, n - total, step)) .. ':' .. (n - total)
  end
  write_want(q, member, n, weight, segs_text, n - total)
  if beat_deadline then redis.call('ZADD', k.beats, beat_deadline, member) end
  return member
end

-- Callers waiting: the single waiters and what the agents want.
local function waiting_count(q)
  local k = q.k
  local n = redis.call('ZCARD', k.queue)
  if n == 0 then return 0 end
  local total = redis.call('HGET', k.want, '*')
  if total then n = n - (redis.call('HLEN', k.want) - 1) + tonumber(total) end
  return n
end

-- The slots handed to agent `client` and not acked yet, still live:
-- {{id, expiry}, ...} (the dead are dropped from its list).
local function handed_to(q, client, now)
  local text = redis.call('HGET', q.k.handed, client)
  if not text then return {} end
  local live, ids = {}, {}
  for id in string.gmatch(text, '[^,]+') do
    local score = tonumber(redis.call('ZSCORE', q.k.leases, id))
    if score and score > now then
      live[#live + 1], ids[#ids + 1] = {id, score}, id
    end
  end
  if #ids == 0 then redis.call('HDEL', q.k.handed, client) else redis.call('HSET', q.k.handed, client, table.concat(ids, ',')) end
  return live
end

-- Takes lease ids off their agents' lists of slots handed and not acked
-- (ids '<client>.h<n>'; any other id changes nothing): one read and one
-- write per agent, however many of its slots a batch acks.
local function unhand(q, ids)
  local by_client = {}
  for _, id in ipairs(ids) do
    local client = string.match(id, '^(.-)%.h%d+$')
    if client then
      local gone = by_client[client]
      if not gone then
        gone = {}
        by_client[client] = gone
      end
      gone[id] = true
    end
  end
  for client, gone in pairs(by_client) do
    local text = redis.call('HGET', q.k.handed, client)
    if text then
      local left = {}
      for other in string.gmatch(text, '[^,]+') do if not gone[other] then left[#left + 1] = other end end
      if #left == 0 then
        redis.call('HDEL', q.k.handed, client)
      else
        redis.call('HSET', q.k.handed, client, table.concat(left, ','))
      end
    end
  end
end

local function enqueue(q, id, tokens, beat_deadline, weight)
  local k = q.k
  redis.call('ZADD', k.queue, 'NX', take_tags(q, group_of(id), 1, 1 / weight), id)
  redis.call('ZADD', k.beats, beat_deadline, id)
  expire_new(q.idle_ms, k.queue)
  expire_new(q.idle_ms, k.beats)
  -- A waiter's estimate is kept even while no token budget is in force: one
  -- may be registered, or heard from the provider's headers, before its turn
  -- comes (promote then takes it; without one, promote drops it).
  if tokens > 0 or (q.budget and q.budget.tpm) then
    if redis.call('HSET', k.tokens, id, tokens) == 1 and redis.call('HLEN', k.tokens) == 1 then
      expire_new(q.idle_ms, k.tokens)
    end
  end
end

-- Whether id was queued (an agent's entry goes whole, with what it wanted).
local function leave(q, id)
  local segs, weight = segments_of(q, id)
  if segs then
    local total = 0
    for _, seg in ipairs(segs) do total = total + seg[2] end
    -- (A dead process's backlog does not push its group back.)
    local g, last = group_of(id), segs[#segs]
    if ends_group(q, g, last, weight) then set_finish(q, g, last[1]) end
    save_segments(q, id, {}, 1, -total)
    redis.call('HDEL', q.k.handed, id)
    return true
  end
  redis.call('ZREM', q.k.beats, id)
  if redis.call('ZREM', q.k.queue, id) == 0 then return false end
  left(q)
  return true
end

-- Drops waiters whose process stopped beating (at most 100 a call).
local function reap_waiters(q, now)
  local k = q.k
  local dead = redis.call('ZRANGEBYSCORE', k.beats, '-inf', now, 'LIMIT', 0, 100)
  for _, id in ipairs(dead) do
    if not string.find(id, '.', 1, true) then leave(q, id) end  -- an agent's entry
  end
  if #dead > 0 then
    redis.call('ZREM', k.queue, unpack(dead))
    redis.call('ZREM', k.beats, unpack(dead))
    forget_waiters(q, dead)
    left(q)
  end
end

-- Lists slots handed to agent entry `client` in the handed hash at once, so
-- that its next batch finds them should the wake-up be lost (and a later
-- item of the same batch, for another of its groups, counts them).
local function list_handed(q, client, ids)
  local before = redis.call('HGET', q.k.handed, client)
  local list = table.concat(ids, ',')
  if before then list = before .. ',' .. list end
  redis.call('HSET', q.k.handed, client, list)
  expire_new(q.idle_ms, q.k.handed)
end

-- The first of the first 100 queued whose group has a reservation with
-- slots free (nil if none): the slots held for a group go to its waiters
-- whatever their place in the queue.
local function reserved_waiter(q, d)
  for _, id in ipairs(redis.call('ZRANGE', q.k.queue, 0, 99)) do
    local g = group_of(id)
    if g and d.reserved[g] and room(d, g) > 0 then return id end
  end
end

-- Hands free slots to the longest waiting live waiters, in order: a single
-- waiter one slot, an agent as many as its oldest segment asks for (one at
-- a time under a budget), then it is scored by its next segment. Returns
-- whether self_id (the caller, alive: its lease lasts lease_ttl) was among
-- them, and the expiry of the others' leases (until claimed), who are told
-- by publish_handoffs. An agent calling (self_id its client) takes its slots
-- from own: {ids = {...}, tokens = {...}, used = 0, got = {}}, the lease ids
-- it chose for its oldest callers; granted ones go to own.got as {id, expiry},
-- and own.starved says a slot was left for want of ids.
local function promote(q, d, now, lease_ttl, self_id, own)
  local k, b = q.k, q.budget
  local got_self = false
  local full, claim = fmt(now + lease_ttl), fmt(now + q.claim_ttl)
  local served  -- the start tag of the last request served in tag order
  for _ = 1, 1000 do
    if d.in_flight >= d.current_limit or now < d.blocked_until then break end
    local first = redis.call('ZRANGE', k.queue, 0, 1, 'WITHSCORES')
    local head, next_tag = first[1], first[4]
    if not head then break end
    local in_order = true
    local free = room(d, group_of(head))
    if free <= 0 then
      -- What is free is held for reserved groups: their waiters go ahead.
      head, next_tag, in_order = d.reserved and reserved_waiter(q, d), nil, false
      if not head then break end
      free = room(d, group_of(head))
    end
    local beat = redis.call('ZSCORE', k.beats, head)
    local tokens = tonumber(redis.call('HGET', k.tokens, head)) or 0
    local alive, fits = beat and tonumber(beat) > now, budget.fits(b, tokens)
    -- The first in line waits for the budget (claiming it), and everyone behind it.
    if alive and fits and budget.wait(b, head, tokens) > 0 then
      budget.claim(b, head, tokens, tonumber(beat))
      break
    end
    local text = alive and fits and redis.call('HGET', k.want, head)
    if text then
      -- The oldest segment, and the text of the others.
      local total, weight, segs = parse_want(text)
      local first_t, first_c, rest = string.match(segs, '^([^:]+):(%d+),?(.*)$')
      local start, step = tonumber(first_t), 1 / weight
      first_c = tonumber(first_c)
      local n = math.min(free, first_c, b and 1 or first_c)
      -- As many as start no later than the next entry's next request; at
      -- least the one it is first in line for (its start as text may round
      -- past its score, and past an entry tied with it).
      if next_tag then n = math.min(n, math.max(1, math.floor((tonumber(next_tag) - start) / step + 1e-9) + 1)) end
      local mine = head == self_id
      if mine then n = math.min(n, #own.ids - own.used) end
      if n <= 0 then  -- its own caller is first, with no more lease ids in this call
        own.starved = true
        break
      end
      local given, handed_now = 0, {}
      -- Ids for the slots handed to another agent, numbered in one go.
      local numbered = mine and 0 or redis.call('HINCRBY', k.handed, '#', n) - n
      for i = 1, n do
        local id, t, expiry = nil, tokens, claim
        if mine then
          own.used = own.used + 1
          id, t, expiry = own.ids[own.used], own.tokens[own.used], full
        else
          id = head .. '.h' .. (numbered + i)
        end
        if grant(d, k, id, t, expiry, q.idle_ms, b) then
          budget.reserve(b, k.tokens, id, t, q.idle_ms)
          given = given + 1
          if mine then
            own.got[#own.got + 1] = {id, now + lease_ttl}
          else
            handed_now[#handed_now + 1] = id
            local list = q.handed_to[head]
            if not list then
              list = {}
              q.handed_to[head], q.agents[#q.agents + 1] = list, head
            end
            list[#list + 1] = id
          end
        end
      end
      if #handed_now > 0 then list_handed(q, head, handed_now) end
      if given > 0 and in_order then served = start + (given - 1) * step end
      first_c, total = first_c - given, total - given
      if total <= 0 then
        save_segments(q, head, {}, 1, -given)
      elseif first_c > 0 then
        start = start + given * step
        write_want(q, head, total, weight, tag_text(start) .. ':' .. first_c .. (rest ~= '' and ',' .. rest or ''), -given)
        redis.call('ZADD', k.queue, start, head)
      else  -- the next segment is the oldest now
        write_want(q, head, total, weight, rest, -given)
        redis.call('ZADD', k.queue, string.match(rest, '^([^:]+)'), head)
      end
    else
      leave(q, head)
      if alive and fits and grant(d, k, head, tokens, head == self_id and full or claim, q.idle_ms, b) then
        if head == self_id then got_self = true else q.handed[#q.handed + 1] = head end
        if in_order then served = tonumber(first[2]) end
        -- A lease granted without a token budget has nothing to settle.
        if not (b and b.tpm) and tokens > 0 then forget_waiters(q, {head}) end
      else
        -- Dead, gave up already (its tombstone went), or the budget shrank
        -- under it (its re-check is refused): dropped.
        if beat and not alive then redis.call('ZREM', k.leases, head) end
        forget_waiters(q, {head})
      end
    end
  end
  if served and redis.call('ZCARD', k.queue) > 0 then redis.call('ZADD', k.groups, served, '~v') end
  return got_self, claim
end

-- How long the first waiter in line should sleep before asking again: until
-- the cooldown ends, or until the earliest lease expires (a dead holder's slot
-- comes back then, and no release will announce it). 0 for everyone else.
local function first_in_line_wait(q, d, id, tokens, now)
  local k = q.k
  if redis.call('ZRANK', k.queue, id) ~= 0 then return 0 end
  if now < d.blocked_until then return d.blocked_until - now end
  local short = budget.wait(q.budget, id, tokens)
  if short > 0 then
    local beat = redis.call('ZSCORE', k.beats, id)
    if beat then budget.claim(q.budget, id, tokens, tonumber(beat)) end
    return short
  end
  local first = redis.call('ZRANGEBYSCORE', k.leases, '(0', '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
  if first[2] then return math.max(0.001, tonumber(first[2]) - now) end
  return 0
end

-- A wake-up is a courtesy: a waiter that misses one finds its slot when it
-- re-checks. pcall, so that a refused publish (no SPUBLISH before Redis 7,
-- an ACL without the channel) never fails a script whose writes are done.
-- The message: '<waiter id or agent entry> <JSON>'.
local function wake(q, id, json)
  redis.pcall(q.publish, q.prefix .. string.match(id, '^[^.~]+'), id .. ' ' .. json)
end

-- While a cooldown blocks the queue, tells the first waiter when it ends: its
-- next request then hands out the free slots.
local function notify_head_of_cooldown(q, d, now)
  if now >= d.blocked_until then return end
  local head = redis.call('ZRANGE', q.k.queue, 0, 0)[1]
  if head then wake(q, head, '{"wait":' .. fmt(d.blocked_until - now) .. ',"domain":"' .. q.domain .. '"}') end
end

-- Wakes the waiters promote handed a slot to: one message per agent, listing
-- its slots (which promote listed in the handed hash too).
local function publish_handoffs(q, d, expiry)
  if #q.handed == 0 and #q.agents == 0 then return end
  local head = '{"expires_at":' .. expiry .. ',"state":' .. state_json(d)
  for _, id in ipairs(q.handed) do wake(q, id, head .. '}') end
  for _, client in ipairs(q.agents) do
    local ids = q.handed_to[client]
    wake(q, client, head .. ',"domain":"' .. q.domain .. '","handed":["' .. table.concat(ids, '","') .. '"]}')
  end
end
