-- Fleet-wide send permits for one page: GCRA on the server's clock, plus the page's cool-down,
-- its circuit breaker (breaker.lua) and Meta's restriction (page_restrict.lua).
-- A call reserves the next batch of permits and says when they become valid: the caller waits
-- that long, then uses them. So each batch costs one call and no caller is ever refused and
-- left to poll. A permit is valid once its theoretical arrival time is within the burst
-- tolerance of now, so in any window of W ms the fleet sends at most rate * W / 1000 + burst
-- permits. (GCRA as in go-redis/redis_rate, BSD licence.)
-- While the breaker is open the fleet gets one permit at a time, a probe, leased until its
-- answer (or the lease) lets the next one go; the others ask again soon, so a recovered page
-- is back at full rate well within a second of its probe's answer.
-- A page's media limit (audio and video) also names the page's rate key: while the page cools
-- down, no media permits are given either (they would pile up and go at once after it).
-- KEYS: 1 fanout:rate:{page} (or fanout:rate:{page}:media), 2 fanout:page:{page}:state
--       (optional), 3 fanout:rate:{page} when 1 is the page's media limit (optional)
-- ARGV: 1 rate (permits per second; 0: no limit, only the cool-down), 2 burst tolerance ms,
--       3 permits wanted, 4 probe lease ms (optional)
-- Returns {granted, wait ms, state}: the permits are valid after wait ms; granted 0 means
-- ask again after wait ms. state: 0 sending, 1 held by the breaker, 2 the permit is the
-- breaker's probe, 3 the page is restricted.
local t = redis.call('TIME')
local now = t[1] * 1000 + t[2] / 1000
if KEYS[2] and redis.call('HEXISTS', KEYS[2], 'restricted') == 1 then
  return {0, 1000, 3}
end
local state = redis.call('HMGET', KEYS[1], 'tat', 'pause_until', 'breaker', 'probe_at')
if state[3] == 'open' then
  local probe_at = tonumber(state[4] or '0')
  if now >= probe_at then
    redis.call('HSET', KEYS[1], 'probe_at', tostring(now + tonumber(ARGV[4] or '30000')))
    return {1, 0, 2}
  end
  return {0, math.min(250, math.ceil(probe_at - now)), 1}
end
if KEYS[3] then
  local page_pause = tonumber(redis.call('HGET', KEYS[3], 'pause_until') or '0')
  if now < page_pause then
    return {0, math.ceil(page_pause - now), 0}
  end
end
local pause_until = tonumber(state[2] or '0')
if now < pause_until then
  return {0, math.ceil(pause_until - now), 0}
end
if tonumber(ARGV[1]) == 0 then
  return {tonumber(ARGV[3]), 0, 0}
end
local interval = 1000 / tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(state[1] or '0')
if tat < now then tat = now end
local granted = tonumber(ARGV[3])
tat = tat + granted * interval
redis.call('HSET', KEYS[1], 'tat', tostring(tat))
redis.call('PEXPIRE', KEYS[1], math.ceil(tat - now) + 3600000)
return {granted, math.max(0, math.ceil(tat - burst - now)), 0}
