-- Flip recipients' delivered / read bits of one job; the counters move only when a bit flips
-- (read implies delivered), so a webhook Meta retries, or a replay, counts nothing twice. A
-- job already swept is not recreated, and a job of another page (metadata that only looks like
-- ours) is not touched.
-- The flips also go to the job's series (per second and per minute, for the page's chart).
-- KEYS: 1 job hash, 2 delivered bitmap, 3 read bitmap, 4 the job's series (optional)
-- ARGV: 1 'd' | 'r', 2 the page the receipt is about, 3.. positions
-- Returns {delivered flipped, read flipped}
local job = redis.call('HMGET', KEYS[1], 'total', 'page_id')
local total = tonumber(job[1] or '0')
if total == 0 or job[2] ~= ARGV[2] then return {0, 0} end
local d, r = 0, 0
for i = 3, #ARGV do
  local pos = tonumber(ARGV[i])
  if pos and pos >= 0 and pos < total then
    if ARGV[1] == 'r' and redis.call('SETBIT', KEYS[3], pos, 1) == 0 then r = r + 1 end
    if redis.call('SETBIT', KEYS[2], pos, 1) == 0 then d = d + 1 end
  end
end
if d > 0 then redis.call('HINCRBY', KEYS[1], 'delivered', d) end
if r > 0 then redis.call('HINCRBY', KEYS[1], 'read', r) end
series_add(KEYS[4], 0, 0, d, r)
return {d, r}
