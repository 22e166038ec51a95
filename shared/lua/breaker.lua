-- The page's circuit breaker, fleet-wide, beside its rate limiter (take_permits reads it): a
-- page whose answers turned mostly transient (a provider outage) is held, and probed one
-- request at a time until an answer that is not transient closes it again.
-- KEYS: 1 fanout:rate:{page}
-- ARGV: 1 'trip' | 'probe_failed' | 'close', 2 ms until the next probe
-- Returns 1 when this call changed the breaker (tripped or closed it), else 0.
local t = redis.call('TIME')
local now = t[1] * 1000 + t[2] / 1000
local open = redis.call('HGET', KEYS[1], 'breaker') == 'open'
local op = ARGV[1]
if op == 'trip' then
  if open then return 0 end
  redis.call('HSET', KEYS[1], 'breaker', 'open', 'breaker_since', tostring(now),
    'probe_at', tostring(now + tonumber(ARGV[2])))
  redis.call('HINCRBY', KEYS[1], 'breaker_trips', 1)
  redis.call('PERSIST', KEYS[1])  -- an outage outlasting the limiter's expiry stays held
  return 1
end
if not open then return 0 end
if op == 'probe_failed' then
  redis.call('HSET', KEYS[1], 'probe_at', tostring(now + tonumber(ARGV[2])))
  return 0
end
redis.call('HDEL', KEYS[1], 'breaker', 'breaker_since', 'probe_at')
redis.call('HSET', KEYS[1], 'breaker_closed_at', tostring(now))
redis.call('PEXPIRE', KEYS[1], 3600000)
return 1
