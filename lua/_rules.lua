-- The rules of the loop: how a domain's limit moves. This file is the whole
-- algorithm; the operation scripts around it are plumbing (keys, leases, the
-- queue, events) that load a domain, call one entry point per event and save
-- it, as a limiter keeps its limit algorithms apart:
--
--   rules.on_acquire(domain, d, now, m)     before a slot is asked for
--   rules.on_outcome(domain, d, now, m, outcome, sample)
--                                           a lease came back: 'success',
--                                           'rate_limited', 'failure' or
--                                           'abandon' (given back unused)
--   rules.on_set_limit(domain, d, now, m, limit)   an operator's number
--
-- d is the domain (its hash fields, see _fields.lua), m the model (m.emax, nil
-- when its registration is gone; m.config, the stored configuration). sample
-- says what the plumbing knows of the lease: released (whether this call gave
-- it back), granted_at (Redis time), retry_after (seconds, or nil), and what
-- the caller measured of a success: ttfb (seconds to the first byte) and
-- tokens (used), or nil. The
-- rules work out everything else themselves, change d and report every change
-- with emit(); they never call Redis.

local rules = {}

local function set_limit(domain, d, event, to)
  if to ~= d.current_limit then
    emit(domain, event, d.current_limit, to)
    d.current_limit = to
  end
end

-- On every touch, whatever the policy: the registered max is a hard cap (also
-- over a hand-set current_limit); a ceiling no 429 has confirmed for
-- ceiling_ttl_seconds is forgotten; a cooldown (a hand-set blocked_until too)
-- lasts at most max_cooldown_seconds from now; and a domain takes up the
-- model's policy when it changed, keeping what it learned of the server (its
-- limit, ceiling and cooldown) and starting the new rules' own counts afresh.
local function take_up_policy(domain, d, cfg)
  if d.policy ~= cfg.policy then
    emit(domain, 'policy', d.policy, cfg.policy)
    d.policy, d.success_streak, d.probe_after, d.increase_step = cfg.policy, 0, 0, 0
    d.latency_round, d.latency_dip = 0, 0
  end
end

-- registered: false when the model's registration is gone (its stored
-- configuration with it: cfg is then the defaults, whose policy is no
-- reason to switch).
local function refresh(domain, d, now, emax, cfg, registered)
  if d.current_limit > emax then set_limit(domain, d, 'clamp', emax) end
  if d.rate_limit_ceiling > 0 and cfg.ceiling_ttl_seconds > 0
      and now - d.ceiling_confirmed_at >= cfg.ceiling_ttl_seconds then
    emit(domain, 'ceiling_forgotten', d.rate_limit_ceiling, 0)
    d.rate_limit_ceiling = 0
  end
  if d.blocked_until > now + cfg.max_cooldown_seconds then
    emit(domain, 'cooldown', now, now + cfg.max_cooldown_seconds)
    d.blocked_until = now + cfg.max_cooldown_seconds
  end
  if registered then take_up_policy(domain, d, cfg) end
end

-- The startup ramp: a linear climb from 1 to the effective max, for every
-- policy. It runs on acquire and on success while rampup_active is 1.
local function ramp(domain, d, now, emax, cfg)
  if d.rampup_active ~= 1 then return end
  local before = d.current_limit
  local elapsed = math.max(0, now - d.rampup_started_at)
  if cfg.rampup_seconds <= 0 or elapsed >= cfg.rampup_seconds then
    d.current_limit = emax
    d.rampup_active = 0
    emit(domain, 'ramp_end', before, emax)
  else
    d.current_limit = math.min(emax, 1 + math.floor((emax - 1) * elapsed / cfg.rampup_seconds))
    if d.current_limit ~= before then emit(domain, 'ramp', before, d.current_limit) end
  end
end

-- A 429 ends the ramp for good, under every policy.
local function stop_ramp(domain, d)
  if d.rampup_active == 1 then
    d.rampup_active = 0
    emit(domain, 'ramp_stopped', d.current_limit, d.current_limit)
  end
end

-- The cooldown a 429 imposes: its Retry-After when it gave a usable one,
-- else cooldown_seconds; never more than max_cooldown_seconds.
local function cooldown_for(cfg, retry_after)
  local wanted = (retry_after and retry_after > 0) and retry_after or cfg.cooldown_seconds
  return math.min(wanted, cfg.max_cooldown_seconds)
end

-- == classic: additive increase, multiplicative decrease =====================
--
-- Each success_window successes add additive_increase, up to the soft cap; the
-- first 429 of a cascade multiplies the limit by reduce_factor, records the
-- limit it cut from as the ceiling and blocks the domain for the Retry-After.

local classic = {}
rules.classic = classic

-- How far increases may go: the effective max, or a little above a known ceiling.
function classic.soft_cap(d, emax, cfg)
  local ceiling = d.rate_limit_ceiling
  if ceiling == 0 then return emax end
  return math.min(emax, ceiling + math.max(1, math.floor(ceiling * cfg.ceiling_overshoot)))
end

function classic.on_success(domain, d, now, emax, cfg)
  d.consecutive_429s = 0
  ramp(domain, d, now, emax, cfg)
  if d.rampup_active == 1 then
    d.success_streak = 0
    return
  end
  d.success_streak = d.success_streak + 1
  if d.success_streak >= cfg.success_window then
    local cap = classic.soft_cap(d, emax, cfg)
    if d.current_limit < cap then
      set_limit(domain, d, 'increase', math.min(cap, d.current_limit + cfg.additive_increase))
    end
    d.success_streak = 0
  end
end

function classic.on_rate_limited(domain, d, now, emax, cfg, cooldown)
  stop_ramp(domain, d)
  d.blocked_until = now + cooldown
  emit(domain, 'cooldown', now, d.blocked_until)
  d.success_streak = 0
  if d.consecutive_429s == 0 then  -- only the first 429 of a cascade cuts
    local before = d.current_limit
    set_limit(domain, d, 'decrease', math.max(1, math.floor(before * cfg.reduce_factor)))
    if d.current_limit < before then
      d.last_cut_at = now
      local ceiling = before
      if d.rate_limit_ceiling > 0 then ceiling = math.min(d.rate_limit_ceiling, before) end
      if ceiling ~= d.rate_limit_ceiling then
        emit(domain, 'ceiling', d.rate_limit_ceiling, ceiling)
        d.rate_limit_ceiling = ceiling
      end
    end
  end
  -- Any 429 confirms a known ceiling, which keeps it from being forgotten.
  if d.rate_limit_ceiling > 0 then d.ceiling_confirmed_at = now end
  d.consecutive_429s = d.consecutive_429s + 1
end

function classic.on_failure(domain, d)
  -- A failure ends a 429 cascade only once the burst has drained.
  if d.in_flight == 0 then d.consecutive_429s = 0 end
end

-- == adaptive: hold under the ceiling, probe it less often the longer it holds ==
--
-- A server that refuses above its capacity C answers the request that makes
-- C+1 with a 429 and serves the rest. So a 429 marks a level (the ceiling,
-- rate_limit_ceiling): the limit goes one below it and stays there, with no
-- fleet-wide pause and no deep cut. After probe_after successes the limit
-- probes the ceiling. A refused probe doubles probe_after (up to
-- PROBE_AFTER_MAX_WINDOWS success windows): probing gets rarer the longer the
-- capacity holds. A probe that holds (see held) proves the ceiling wrong: the
-- ceiling is dropped, probe_after halves, and the limit climbs with a step
-- (increase_step) that doubles each round, until a 429 sets a new ceiling.
-- Below the ceiling the limit climbs back a step per quarter round.
--
-- A 429 under the ceiling is noise or a drop in capacity. At the level just
-- under the ceiling, once that level has held, a first 429 is noise and changes
-- nothing: were the capacity lower, the next request at that level would be
-- refused too. Any other 429 under the ceiling lowers the ceiling to where it came,
-- and the new ceiling is probed after a short wait. After PERSISTING_429S 429s
-- with no request sent since a cut getting through (consecutive_429s), the
-- cut is multiplicative (reduce_factor), and at limit 1 the fleet pauses for
-- the Retry-After: only refusals that persist stop everyone.
--
-- A request sent before the last cut (a burst already in flight) is stale:
-- its 429 takes the limit one lower, and counts nothing else. Successes move
-- the limit only while the fleet uses it all (saturated). A round is as many
-- successes as the limit, about one service time.

local adaptive = {}
rules.adaptive = adaptive

local PROBE_AFTER_MAX_WINDOWS = 16
local PERSISTING_429S = 3
local NOISE_WINDOWS = 2

-- The least wait before a probe: two rounds, at most a success window, so
-- that a low limit is tested within seconds.
local function probe_base(cfg, limit)
  return math.min(cfg.success_window, 2 * limit)
end

-- Successes after which a level has held: a round, and at least probe_base.
local function held(cfg, limit)
  return math.max(limit, probe_base(cfg, limit))
end

local function set_ceiling(domain, d, ceiling)
  if ceiling ~= d.rate_limit_ceiling then
    emit(domain, 'ceiling', d.rate_limit_ceiling, ceiling)
    d.rate_limit_ceiling = ceiling
  end
end

function adaptive.on_success(domain, d, now, emax, cfg, fresh, saturated)
  if fresh then d.consecutive_429s = 0 end
  ramp(domain, d, now, emax, cfg)
  if d.rampup_active == 1 then
    d.success_streak = 0
    return
  end
  if not saturated or d.current_limit >= emax then return end
  d.success_streak = d.success_streak + 1
  local limit, ceiling, streak = d.current_limit, d.rate_limit_ceiling, d.success_streak
  if ceiling > 0 and limit < ceiling - 1 then
    if streak >= math.max(1, math.floor(limit / 4)) then
      set_limit(domain, d, 'increase', limit + 1)
      d.success_streak = 0
    end
  elseif ceiling > 0 and limit == ceiling - 1 then
    if streak >= math.max(d.probe_after, probe_base(cfg, limit)) then
      set_limit(domain, d, 'probe', ceiling)
      d.success_streak = 0
    end
  elseif streak >= (ceiling > 0 and held(cfg, limit) or limit) then
    if ceiling > 0 then  -- the probe held: the ceiling was wrong, or the capacity grew
      set_ceiling(domain, d, 0)
      d.probe_after = math.max(probe_base(cfg, limit), math.floor(d.probe_after / 2))
    end
    local step = math.max(1, d.increase_step)
    set_limit(domain, d, 'increase', math.min(emax, limit + step))
    d.increase_step = math.min(2 * step, math.max(1, math.floor(d.current_limit / 4)))
    d.success_streak = 0
  end
end

function adaptive.on_rate_limited(domain, d, now, emax, cfg, cooldown, fresh, saturated)
  stop_ramp(domain, d)
  local before, ceiling, streak = d.current_limit, d.rate_limit_ceiling, d.success_streak
  if not fresh then
    if saturated then
      set_limit(domain, d, 'decrease', math.max(1, before - 1))
      if ceiling == 0 or ceiling > d.current_limit + 1 then set_ceiling(domain, d, d.current_limit + 1) end
      d.success_streak, d.increase_step = 0, 1
    end
    return
  end
  if before > 1 and (ceiling == 0 or before >= ceiling) then
    -- Expected: a probe of the ceiling, or the climb finding the capacity.
    local base = probe_base(cfg, before)
    -- Capped per round, not per request: at most 16 rounds (and windows) apart.
    local cap = PROBE_AFTER_MAX_WINDOWS * math.max(cfg.success_window, before)
    d.probe_after = math.min(cap, 2 * math.max(d.probe_after, base))
    set_ceiling(domain, d, before)
    set_limit(domain, d, 'decrease', before - 1)
    -- Back under a probed ceiling, the level has held already (the probe came
    -- after it held).
    d.success_streak = before == ceiling and NOISE_WINDOWS * cfg.success_window or 0
  else
    d.consecutive_429s = d.consecutive_429s + 1
    local cost = NOISE_WINDOWS * cfg.success_window
    if before == ceiling - 1 and streak >= cost and d.consecutive_429s == 1 then
      d.success_streak = streak - cost  -- noise, as long as it stays rare
      return
    end
    local persisting = d.consecutive_429s >= PERSISTING_429S
    set_ceiling(domain, d, before)
    if persisting then
      set_limit(domain, d, 'decrease', math.max(1, math.floor(before * cfg.reduce_factor)))
      d.success_streak = 0
    else
      set_limit(domain, d, 'decrease', math.max(1, before - 1))
      -- Probe the new ceiling after a short wait, not the long one the old ceiling
      -- had earned: it may have been noise twice over.
      d.success_streak = math.max(0, d.probe_after - probe_base(cfg, d.current_limit))
    end
    if before == 1 and persisting then
      d.blocked_until = math.max(d.blocked_until, now + cooldown)
      emit(domain, 'cooldown', now, d.blocked_until)
    end
  end
  d.ceiling_confirmed_at, d.last_cut_at = now, now  -- requests sent before now are stale
  d.increase_step = 1
end

function adaptive.on_failure(domain, d)
  if d.in_flight == 0 then d.consecutive_429s = 0 end
end

-- == latency: adaptive, and hold where the server starts to queue ============
--
-- A server that queues instead of refusing serves more at once up to its
-- knee (its batch), and no more beyond it: past the knee every request only
-- waits longer (Little's law: latency grows with what is at the server,
-- throughput does not). So latency against the no-load latency says where
-- the fleet is: up to tolerance times no load is the batch filling, beyond
-- it is a queue. The policy is adaptive's (429s, overload statuses and
-- failures go to adaptive, and so does every success while latency is
-- under tolerance times no load); above it, the limit stops climbing and
-- once a round (as many successes as the limit, counting only requests sent
-- since the last step) takes a gradient step, as Netflix's Gradient2 and
-- Envoy's gradient controller do:
--
--   limit = floor(limit * max(1/2, tolerance * no_load / recent) + HEADROOM * sqrt(limit))
--
-- only ever down. It holds where recent / no_load is between tolerance and
-- tolerance / (1 - HEADROOM / sqrt(limit)), a band of fixed points: a
-- latency above it cuts, one under it lets adaptive climb, and a step is at
-- most a halving.
--
-- A sample is the request's time on Redis's clock (granted to reported)
-- divided by the tokens it used when the caller reported them (so a long
-- answer is not read as queueing); else the time to the first byte when it
-- reported one (a stream without usage: the first byte comes after the
-- queue and the prompt, whatever the answer's length); else the request's
-- time. latency_recent is a running median of the samples (each moves it
-- RECENT_STEP of itself towards the sample): a heavy tail moves it no more
-- than a short answer. latency_noload is first the geometric mean of the
-- first FIRST_SAMPLES samples; then it follows latency_recent down, slowly
-- (NOLOAD_DOWN), and goes up only when a dip measures it.
--
-- latency_spread is the samples' mean distance (in log) from the median.
-- Above SPREAD_MAX (raw times of answers of unknown length) the median
-- wanders by itself as far as a queue would move it: the policy leaves the
-- limit to adaptive, unless the latency passes NOISE_BOUND times no load.
--
-- A no-load latency that only goes down cannot tell a server that got
-- slower for everyone (a hosted API's bad hour) from a queue, and would cut
-- the fleet to nothing. So, as Envoy's minRTT window (and BBR's PROBE_RTT)
-- do, the first step due once latency_window_seconds (0.9 to 1.1 of it,
-- jittered per window) have passed since the last measure is a dip: the
-- limit goes to a quarter, and the geometric mean of the requests sent
-- during the dip is the no-load latency as it is now; then the limit goes
-- to the step it was to take (unless a 429 cut it meanwhile). A dip that
-- finds tolerance times the old no-load latency dips again, to a quarter of
-- itself: a server slower for everyone is as slow there (its new no-load
-- latency), a queue that had not drained yet (the first dip, from a limit
-- far too high) is not.

local latency = {}
rules.latency = latency

local RECENT_STEP, SPREAD_STEP = 0.06, 0.05
local DIP_ROUNDS, DIP_LEAST = 2, 8
-- Samples the median takes before it is the first no-load latency.
local FIRST_SAMPLES = 20
-- A dip lasts at most this share of the window, once it heard DIP_FEW samples.
local DIP_LONGEST, DIP_FEW = 0.1, 3
-- How far the no-load latency follows the median down, per sample: a lasting
-- drop within a hundred samples or so, a dip of the median's own noise hardly.
local NOLOAD_DOWN = 0.02
-- The step's headroom, in square roots of the limit: how far above tolerance
-- the latency may go before the limit steps down.
local HEADROOM = 0.5
-- Samples that scatter more than this (a lognormal of sigma 0.75) say too
-- little about a queue in the time a queue takes to build: the policy then
-- does what adaptive does. A spread not measured yet counts as SPREAD_UNKNOWN.
local SPREAD_MAX, SPREAD_UNKNOWN = 0.6, 1
-- Unless the latency is this many times the no-load latency: no scatter
-- moves a median that far, a queue does (and a queue's waits scatter as
-- much as the answers' lengths, so a spread measured under one is high).
local NOISE_BOUND = 4

-- What the request says of the server's latency: nil when nothing was measured.
local function latency_sample(now, sample)
  local took = now - sample.granted_at
  if sample.tokens and sample.tokens > 0 then return took > 0 and took / sample.tokens or nil end
  if sample.ttfb then return sample.ttfb > 0 and sample.ttfb or nil end
  return took > 0 and took or nil
end

local function track_spread(d, x)
  local spread = d.latency_spread + SPREAD_STEP * (math.abs(math.log(x / d.latency_recent)) - d.latency_spread)
  d.latency_spread = math.floor(spread * 1e6 + 0.5) / 1e6  -- short in redis-cli
end

local function track(d, x, step)
  local recent = d.latency_recent
  track_spread(d, x)
  if x > recent then
    d.latency_recent = math.min(x, recent * (1 + step))
  elseif x < recent then
    d.latency_recent = math.max(x, recent * (1 - step))
  end
end

-- A dip's samples, and the first ones: their running geometric mean (the
-- median of a lognormal), exact from the first sample on, in latency_recent;
-- latency_round counts them.
local function average(d, x)
  local n = d.latency_round + 1
  if n == 1 then
    d.latency_recent = x
    if d.latency_noload <= 0 then d.latency_spread = SPREAD_UNKNOWN end
  else
    track_spread(d, x)
    d.latency_recent = math.exp(((n - 1) * math.log(d.latency_recent) + math.log(x)) / n)
  end
  d.latency_round = n
end

local function dip_samples(level)
  return math.max(DIP_LEAST, DIP_ROUNDS * level)
end

-- The window, jittered by when it began: domains started together do not dip together.
local function window_over(d, now, cfg)
  local jitter = 0.9 + 0.2 * (math.floor(d.latency_window_at * 1000) % 1000) / 1000
  return now - d.latency_window_at >= cfg.latency_window_seconds * jitter
end

-- The limit dips to a quarter of what it is (the limit goes back to `back`
-- after the dip).
local function dip(domain, d, now, back)
  stop_ramp(domain, d)
  -- The first dip: the first samples may have come from a full queue (a
  -- fleet that starts at its max), so it always dips again (see end_dip).
  if d.latency_window_at == 0 then d.latency_noload = 0 end
  d.latency_dip, d.latency_window_at, d.latency_round = back, now, 0
  set_limit(domain, d, 'latency_dip', math.max(1, math.floor(d.current_limit / 4)))
end

-- A dip heard enough: its latency is the no-load latency. Unless it is
-- tolerance times the last one: the server got slower for everyone, or the
-- dip was still above the knee (the first, from a limit far too high). A
-- dip to a quarter of this one tells which: the same latency again is the
-- new no-load latency, a lower one is the queue draining.
local function end_dip(domain, d, now, emax, cfg)
  local before = d.latency_noload
  emit(domain, 'latency_noload', before, d.latency_recent)
  d.latency_noload = d.latency_recent
  if d.latency_recent > cfg.latency_tolerance * before and d.current_limit > 1 then
    return dip(domain, d, now, d.latency_dip)
  end
  local back = math.min(emax, d.latency_dip)
  if d.last_cut_at < d.latency_window_at then set_limit(domain, d, 'latency_back', back) end
  d.latency_dip, d.latency_round, d.latency_window_at = 0, 0, now
end

function latency.on_success(domain, d, now, emax, cfg, fresh, saturated, sample)
  local x = latency_sample(now, sample)
  if d.latency_dip > 0 then
    if fresh then d.consecutive_429s = 0 end
    if x and sample.granted_at >= d.latency_window_at then average(d, x) end
    -- Enough samples; or long enough (a heavy tail takes long to drain):
    -- what the dip heard so far, if anything, is the new no-load latency.
    if d.latency_round >= dip_samples(d.current_limit) or (d.latency_round >= DIP_FEW
        and now - d.latency_window_at >= DIP_LONGEST * cfg.latency_window_seconds) then
      end_dip(domain, d, now, emax, cfg)
    end
    return
  end
  if d.latency_noload <= 0 then  -- the first samples: the median found, the no-load latency is that
    if x then average(d, x) end
    if d.latency_round >= FIRST_SAMPLES then d.latency_noload, d.latency_round = d.latency_recent, 0 end
    return adaptive.on_success(domain, d, now, emax, cfg, fresh, saturated)
  end
  if x then
    track(d, x, RECENT_STEP)
    if d.latency_recent < d.latency_noload then
      d.latency_noload = d.latency_noload + NOLOAD_DOWN * (d.latency_recent - d.latency_noload)
    end
  end
  local tol = cfg.latency_tolerance
  local ratio = d.latency_recent / d.latency_noload
  local noisy = d.latency_spread > SPREAD_MAX and ratio < NOISE_BOUND
  if ratio <= tol or noisy then
    d.latency_round = 0
    return adaptive.on_success(domain, d, now, emax, cfg, fresh, saturated)
  end
  d.success_streak = 0
  -- A round counts requests sent since the last step: those sent before it
  -- still carry the queue the step was to drain.
  if not fresh then return end
  d.consecutive_429s = 0
  d.latency_round = d.latency_round + 1
  local limit = d.current_limit
  if d.latency_round < limit then return end
  d.latency_round = 0
  local gradient = math.max(0.5, tol * d.latency_noload / d.latency_recent)
  local to = math.max(1, math.floor(limit * gradient + HEADROOM * math.sqrt(limit)))
  if to >= limit then return end
  stop_ramp(domain, d)  -- a queue already: the ramp has gone far enough
  d.increase_step = 1
  if window_over(d, now, cfg) then
    -- Measure the no-load latency again before cutting on the old one; the
    -- step is taken meanwhile, should the dip confirm it.
    dip(domain, d, now, to)
  else
    set_limit(domain, d, 'latency', to)
    d.last_cut_at = now
  end
end

latency.on_rate_limited, latency.on_failure = adaptive.on_rate_limited, adaptive.on_failure

function rules.on_acquire(domain, d, now, m)
  refresh(domain, d, now, m.emax, m.config, true)
  ramp(domain, d, now, m.emax, m.config)
end

-- A registration Redis lost (deleted, evicted) is unknown, not 1: the limit
-- stays where it is, and only a 429 moves it (down), until the client that
-- hears of it registers again.
function rules.on_outcome(domain, d, now, m, outcome, sample)
  local cfg, emax = m.config, m.emax or d.current_limit
  refresh(domain, d, now, emax, cfg, m.emax ~= nil)
  if not sample.released or outcome == 'abandon' or not (m.emax or outcome == 'rate_limited') then return end
  local policy = rules[d.policy]
  -- What the rules learn of the request: sent after the last cut, and sent
  -- while every slot was taken (in_flight no longer counts it).
  local fresh = sample.granted_at >= d.last_cut_at
  local saturated = d.in_flight + 1 >= d.current_limit
  if outcome == 'success' then
    policy.on_success(domain, d, now, emax, cfg, fresh, saturated, sample)
  elseif outcome == 'rate_limited' then
    policy.on_rate_limited(domain, d, now, emax, cfg, cooldown_for(cfg, sample.retry_after), fresh, saturated)
    d.total_429s = d.total_429s + 1
  else
    policy.on_failure(domain, d, now, emax, cfg, fresh, saturated)
  end
end

-- An operator set the limit by hand: clamped to 1..effective max, and a
-- running ramp stops (the operator's number wins), and so does a latency
-- dip. Under the adaptive and latency policies that also sets the ceiling just above it, so that the loop holds there and
-- probes it in time instead of climbing straight back.
function rules.on_set_limit(domain, d, now, m, limit)
  take_up_policy(domain, d, m.config)  -- the operator's number, under the rules that will run it
  local before = d.current_limit
  d.current_limit = math.max(1, math.min(m.emax, limit))
  if d.rampup_active == 1 then
    d.rampup_active = 0
    emit(domain, 'ramp_stopped', before, before)
  end
  emit(domain, 'set_limit', before, d.current_limit)
  d.latency_dip, d.latency_round = 0, 0
  if d.policy ~= 'classic' and d.current_limit < m.emax then
    local ceiling = d.current_limit + 1
    if d.rate_limit_ceiling ~= ceiling then emit(domain, 'ceiling', d.rate_limit_ceiling, ceiling) end
    d.rate_limit_ceiling, d.ceiling_confirmed_at, d.last_cut_at, d.success_streak = ceiling, now, now, 0
  end
end
