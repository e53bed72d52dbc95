-- reset: forget what the fleet learned about some domains of a model. Their
-- state and leases are deleted; the next acquire creates them afresh (ramp
-- included). Outcomes reported on the deleted leases change nothing.
--
-- KEYS[1]     cap hash       <ns>:{<provider>/<model>}:cap
-- KEYS[2]     domain index   <ns>:{<provider>/<model>}:domains
-- KEYS[3]     event stream   <ns>:{<provider>/<model>}:events
-- KEYS[8i-4..8i+3] for domain i: its hash <ns>:{<provider>/<model>}:<domain>, and
--             its :leases, :queue, :beats, :groups, :want, :handed and :tokens keys
--
-- ARGV[1]     now               seconds, or '' for the server's TIME
-- ARGV[1+i]   name of domain i
--
-- Reply: how many of the domains existed.

local now = clock(ARGV[1])
local existed = 0
for i = 1, #ARGV - 1 do
  local name = ARGV[1 + i]
  local base = 8 * i - 4
  local domain_key, leases_key = KEYS[base], KEYS[base + 1]
  local limit = redis.call('HGET', domain_key, 'current_limit')
  local held = live_leases(leases_key)
  -- Waiters still queued notice on their next re-check and queue again.
  redis.call('DEL', unpack(KEYS, base + 2, base + 7))
  if redis.call('DEL', domain_key, leases_key) > 0 then
    existed = existed + 1
    -- from: the limit it had (as text, possibly hand-edited), to: leases dropped
    emit(name, 'reset', tonumber(limit) or 0, held)
  end
  redis.call('SREM', KEYS[2], name)
end
flush_events(KEYS[3], now, model_idle_ms(KEYS[1]))
return existed
