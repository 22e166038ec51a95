-- Fleet-wide send permits for one page: GCRA on the server's clock, plus the page's cool-down.
-- A call reserves the next batch of permits and says when they become valid: the caller waits
-- that long, then uses them. So each batch costs one call and no caller is ever refused and
-- left to poll. A permit is valid once its theoretical arrival time is within the burst
-- tolerance of now, so in any window of W ms the fleet sends at most rate * W / 1000 + burst
-- permits. (GCRA as in go-redis/redis_rate, BSD licence.)
-- KEYS: 1 fanout:rate:{page}
-- ARGV: 1 rate (permits per second; 0: no limit, only the cool-down), 2 burst tolerance ms,
--       3 permits wanted
-- Returns {granted, wait ms}: the permits are valid after wait ms; granted 0 means the page
-- is cooling down: ask again after wait ms.
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
local granted = tonumber(ARGV[3])
tat = tat + granted * interval
redis.call('HSET', KEYS[1], 'tat', tostring(tat))
redis.call('PEXPIRE', KEYS[1], math.ceil(tat - now) + 3600000)
return {granted, math.max(0, math.ceil(tat - burst - now))}
