-- probe: which of the commands the scripts call this Redis user may not run.
--
-- A script stopped by a refused command keeps what it wrote before it, so a
-- client asks this once, before its first script call, and refuses to start
-- when anything is missing. Every command the scripts call is tried here
-- (tests/test_permissions.py holds the list against the scripts), with
-- redis.pcall, on a scratch key of the model: Redis checks a command's
-- permission before it runs it, and each try below writes nothing, or only
-- to the scratch key, which is deleted again.
--
-- KEYS[1] scratch key    <ns>:{<provider>/<model>}:cap:probe (absent before and after)
--
-- ARGV[1] channel        <ns>:{<provider>/<model>}:wake:probe (nobody listens on it)
--
-- Reply: {command, error, command, error, ...} for each command refused (lower
-- case, with Redis's words), empty when the user may run them all.

local scratch, channel = KEYS[1], ARGV[1]
local refused = {}

local function try(command)
  local ok = redis.pcall((table.unpack or unpack)(command))
  if type(ok) == 'table' and ok.err then
    local text = string.lower(tostring(ok.err))  -- (fakeredis: not a Lua string)
    for _, sign in ipairs({'acl', 'noperm', 'permission', 'user executing the script'}) do
      if string.find(text, sign, 1, true) then
        refused[#refused + 1] = string.lower(command[1])
        refused[#refused + 1] = tostring(ok.err)
        return false
      end
    end
  end
  return true
end

-- DEL first, on the absent key: without it nothing may be created below.
local may_delete = try({'DEL', scratch})
-- Tried while the key is absent: none of these writes anything.
local PROBES = {
  {'GET', scratch},
  {'HSET', scratch, 'f', 'v', 'odd'},  -- refused for its arity after the permission check
  {'HDEL', scratch, 'f'},
  {'HGET', scratch, 'f'},
  {'HGETALL', scratch},
  {'HLEN', scratch},
  {'HMGET', scratch, 'f'},
  {'PEXPIRE', scratch, 1000},
  {'PTTL', scratch},
  {'SMEMBERS', scratch},
  {'SREM', scratch, 'm'},
  {'TIME'},
  {'XADD', scratch, 'NOMKSTREAM', '*', 'f', 'v'},
  {'ZADD', scratch, 'XX', 'NX', 0, 'm'},  -- refused as a syntax error after the permission check
  {'ZCARD', scratch},
  {'ZCOUNT', scratch, 0, 1},
  {'ZRANGE', scratch, 0, -1},
  {'ZRANGEBYSCORE', scratch, 0, 1},
  {'ZRANK', scratch, 'm'},
  {'ZREM', scratch, 'm'},
  {'ZREMRANGEBYSCORE', scratch, 0, 1},
  {'ZSCORE', scratch, 'm'},
  {'PUBLISH', channel, 'probe'},
  {'SPUBLISH', channel, 'probe'},
}
for _, command in ipairs(PROBES) do
  try(command)
end
-- These create the key (the others then fail on its type), so only where
-- it can be deleted again.
local CREATING = {
  {'SADD', scratch, 'm'},
  {'INCR', scratch},
  {'HINCRBY', scratch, 'f', 1},
}
if may_delete then
  for _, command in ipairs(CREATING) do
    try(command)
  end
  redis.pcall('DEL', scratch)
end
return refused
