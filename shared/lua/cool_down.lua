-- The provider said "slow down" for this page: pause the whole fleet's permits for it.
-- The pause doubles with each throttle that arrives after the previous pause ended (the
-- errors continue) and starts again from the base once a minute has passed without one (they
-- stopped). Throttles during a pause came from requests already in flight: they do not
-- escalate it. A hint from the provider (Retry-After, estimated_time_to_regain_access) wins
-- when longer.
-- KEYS: 1 fanout:rate:{page}
-- ARGV: 1 hint ms (0 if none), 2 base ms, 3 cap ms
-- Returns the ms left in the pause.
local t = redis.call('TIME')
local now = t[1] * 1000 + t[2] / 1000
local state = redis.call('HMGET', KEYS[1], 'pause_until', 'strikes', 'last_strike')
local pause_until = tonumber(state[1] or '0')
if now < pause_until then
  return math.ceil(pause_until - now)
end
local strikes = tonumber(state[2] or '0')
if now - pause_until > 60000 then
  strikes = 0  -- a quiet minute since the last pause ended: start again from the base
end
strikes = strikes + 1
local cap = tonumber(ARGV[3])
local pause = math.min(cap, tonumber(ARGV[2]) * 2 ^ (strikes - 1))
local hint = tonumber(ARGV[1])
if hint > pause then pause = math.min(hint, cap) end
redis.call('HSET', KEYS[1], 'pause_until', tostring(now + pause), 'strikes', strikes,
  'last_strike', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(pause) + 3600000)
return math.ceil(pause)
