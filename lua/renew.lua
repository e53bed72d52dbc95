-- renew: push back the expiry of live leases (any domains of one model).
--
-- KEYS[1]     cap hash       <ns>:{<provider>/<model>}:cap
-- KEYS[2]     domain index   <ns>:{<provider>/<model>}:domains
-- KEYS[3]     event stream   <ns>:{<provider>/<model>}:events
-- KEYS[3i+1]  domain hash of lease i   <ns>:{<provider>/<model>}:<domain>
-- KEYS[3i+2]  leases zset of lease i   <ns>:{<provider>/<model>}:<domain>:leases
-- KEYS[3i+3]  tokens hash of lease i   <ns>:{<provider>/<model>}:<domain>:tokens
--             (its reservation lives as long as the lease)
--
-- ARGV[1]     now               seconds, or '' for the server's TIME
-- ARGV[2]     lease_ttl         seconds
-- ARGV[2+i]   id of lease i
--
-- Reply (JSON): one number per lease: its new expiry, or 0 when the lease was
-- already released or expired (an expired lease is never brought back).

local now = clock(ARGV[1])
local lease_ttl = tonumber(ARGV[2])
-- Never shorter than a lease: the model's idle time is the last register's,
-- and a held lease's domain must not expire between two of its renewals.
local idle_ms = lease_floor(model_idle_ms(KEYS[1]), lease_ttl)
local expiry = fmt(now + lease_ttl)
local renewed = {}
for i = 1, #ARGV - 2 do
  local domain_key, leases_key, tokens_key = KEYS[3 * i + 1], KEYS[3 * i + 2], KEYS[3 * i + 3]
  local score = redis.call('ZSCORE', leases_key, ARGV[2 + i])
  if score and tonumber(score) > now then
    redis.call('ZADD', leases_key, 'XX', expiry, ARGV[2 + i])
    touch(idle_ms, domain_key, leases_key, KEYS[1], KEYS[2], KEYS[3])
    if idle_ms > 0 and redis.call('PTTL', tokens_key) >= 0 then redis.call('PEXPIRE', tokens_key, idle_ms) end
    renewed[i] = now + lease_ttl
  else
    renewed[i] = 0
  end
end
return cjson.encode(renewed)
