-- Meta restricted the page (10/1893063): mark it, so its permits stop fleet-wide and new jobs
-- are refused, and answer the page's jobs for the caller to pause (they live on other shards).
-- KEYS: 1 page state, 2 page jobs
-- ARGV: 1 reason
-- Returns {1 if this call restricted the page (0 if it already was), job id...}.
local fresh = 0
if not redis.call('HGET', KEYS[1], 'restricted') then
  local t = redis.call('TIME')
  redis.call('HSET', KEYS[1], 'restricted', '1', 'reason', ARGV[1],
    'since', t[1] * 1000 + math.floor(t[2] / 1000))
  fresh = 1
end
local out = {fresh}
for _, id in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do out[#out + 1] = id end
return out
