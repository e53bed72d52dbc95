-- reset: forget what the fleet learned about some domains of a model. Their
-- state and leases are deleted; the next acquire creates them afresh (ramp
-- included). Outcomes reported on the deleted leases change nothing.
--
-- KEYS[1]     domain index   <ns>:{<provider>/<model>}:domains
-- KEYS[2]     event stream   <ns>:{<provider>/<model>}:events
-- KEYS[5i-2..5i+2] for domain i: its hash <ns>:{<provider>/<model>}:<domain>, and
--             its :leases, :queue, :beats and :tickets keys
--
-- ARGV[1]     now               seconds, or '' for the server's TIME
-- ARGV[2]     events_maxlen     the event stream's approximate MAXLEN
-- ARGV[3]     idle_ms           idle expiry in milliseconds (0: never expire)
-- ARGV[3+i]   name of domain i
--
-- Reply: how many of the domains existed.

local now = clock(ARGV[1])
local events_maxlen, idle_ms = ARGV[2], tonumber(ARGV[3])
local existed = 0
for i = 1, #ARGV - 3 do
  local name = ARGV[3 + i]
  local base = 5 * i - 2
  local domain_key, leases_key = KEYS[base], KEYS[base + 1]
  local limit = redis.call('HGET', domain_key, 'current_limit')
  local held = live_leases(leases_key)
  -- Waiters still queued notice on their next re-check and queue again.
  redis.call('DEL', KEYS[base + 2], KEYS[base + 3], KEYS[base + 4])
  if redis.call('DEL', domain_key, leases_key) > 0 then
    existed = existed + 1
    -- from: the limit it had (as text, possibly hand-edited), to: leases dropped
    emit(name, 'reset', tonumber(limit) or 0, held)
  end
  redis.call('SREM', KEYS[1], name)
end
flush_events(KEYS[2], now, events_maxlen, idle_ms)
return existed
