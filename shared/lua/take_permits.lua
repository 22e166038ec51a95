-- Fleet-wide send permits for one page: GCRA on the server's clock, plus the page's cool-down.
-- Grants up to ARGV[3] permits at once, but never lets the theoretical arrival time run more
-- than the burst tolerance ahead of now, so in any window of W ms the fleet is granted at
-- most rate * W / 1000 + burst permits. (After go-redis/redis_rate's GCRA, BSD licence.)
-- KEYS: 1 fanout:rate:{page}
-- ARGV: 1 rate (permits per second; 0: no limit, only the cool-down), 2 burst tolerance ms,
--       3 permits wanted
-- Returns {granted, wait ms}: granted 0 means wait that long and ask again.
local t = redis.call('TIME')
local now = t[1] * 1000 + t[2] / 1000
local state = redis.call('HMGET', KEYS[1], 'tat', 'pause_until')
local pause_until = tonumber(state[2] or '0')
if now < pause_until then
  return {0, math.ceil(pause_until - now)}
end
if tonumber(ARGV[1]) == 0 then
  return {tonumber(ARGV[3]), 0}
end
local interval = 1000 / tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(state[1] or '0')
if tat < now then tat = now end
local room = math.floor((now + burst - tat) / interval)
if room < 1 then
  return {0, math.ceil(tat + interval - now - burst)}
end
local granted = math.min(room, tonumber(ARGV[3]))
tat = tat + granted * interval
redis.call('HSET', KEYS[1], 'tat', tostring(tat))
redis.call('PEXPIRE', KEYS[1], math.ceil(tat - now) + 3600000)
return {granted, 0}
