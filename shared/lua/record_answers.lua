-- Answers as they arrive, in batches (one call per batch of a job's answers, not per chunk), so
-- a consumer killed mid-chunk leaves at most its unrecorded answers to be resent, never the
-- whole chunk. Idempotent for sent and failed (bits); see record_outcome for doubts. The chunk's
-- finish records its answers again (a no-op then) and alone acks and completes.
-- Auto-pause: when the job's recent failure rate (failure_rate, lib.lua) is above its
-- max_failure_rate, a running job is paused here, its reason naming the rate and top codes.
-- The job's chart: series_add (lib.lua).
-- KEYS: 1 job hash, 2 sent, 3 failed, 4 errors, 5 indoubt, 6 fallback, 7 shard job stats,
--       8 series (6, 7 and 8 absent from older callers: no auto-pause nor chart then)
-- ARGV: 1 outcome (msgpack, as in record_outcome), 2 errors stream cap
-- Returns {sent, failed, paused (1 when this call paused the job)}.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {0, 0, 0}  -- the job expired or was deleted: nothing to count
end
local sent, failed = record_outcome(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5],
  cmsgpack.unpack(ARGV[1]), ARGV[2], KEYS[6])
series_add(KEYS[8], sent, failed)
if failed == 0 or not KEYS[7] then return {sent, failed, 0} end
local h = redis.call('HMGET', KEYS[1], 'status', 'max_failure_rate')
local limit = tonumber(h[2] or '0.2')
local rate = failure_rate(KEYS[1])
if h[1] ~= 'running' or limit >= 1 or not rate or rate <= limit then
  return {sent, failed, 0}
end
-- the three most frequent failure codes of the job
local all = redis.call('HGETALL', KEYS[1])
local codes = {}
for i = 1, #all, 2 do
  if string.sub(all[i], 1, 5) == 'code:' then
    table.insert(codes, {string.sub(all[i], 6), tonumber(all[i + 1])})
  end
end
table.sort(codes, function(a, b) return a[2] > b[2] end)
local top = {}
for i = 1, math.min(3, #codes) do top[i] = codes[i][1] .. ' (' .. codes[i][2] .. ')' end
local reason = string.format(
  'auto-paused: %d%% of the last %d recipients failed (max_failure_rate %d%%); top codes: %s',
  math.floor(rate * 100 + 0.5), FAILURE_WINDOW, math.floor(limit * 100 + 0.5),
  table.concat(top, ', '))
local t = redis.call('TIME')
redis.call('HSET', KEYS[1], 'status', 'paused', 'paused_from', 'running',
  'paused_at', t[1] * 1000 + math.floor(t[2] / 1000), 'reason', reason, 'auto_paused', 1)
redis.call('HINCRBY', KEYS[7], 'running', -1)
redis.call('HINCRBY', KEYS[7], 'paused', 1)
return {sent, failed, 1}
