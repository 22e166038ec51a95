-- Stop a job: the provider refused the page itself (invalid or expired token), so no other
-- recipient can be reached. Nothing more is released; recipients not sent or failed by the
-- time every released chunk is acknowledged are counted skipped (see finish_chunk.lua).
-- KEYS: 1 job hash, 2 backlog, 3 shard job stats, 4 shard ended jobs, 5 shard due callbacks
-- ARGV: 1 status ('failed' or 'cancelled'), 2 reason, 3 job id
-- Returns 1 if this call stopped the job, 0 if it had already ended.
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'pending' and status ~= 'running' and status ~= 'paused'
    and status ~= 'scheduled' then
  return 0
end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'reason', ARGV[2])
redis.call('HINCRBY', KEYS[3], status, -1)
redis.call('HINCRBY', KEYS[3], ARGV[1], 1)
redis.call('DEL', KEYS[2])
local h = redis.call('HMGET', KEYS[1], 'released', 'acked', 'total', 'sent', 'failed')
if tonumber(h[1]) == tonumber(h[2]) then
  local t = redis.call('TIME')
  local now_ms = t[1] * 1000 + math.floor(t[2] / 1000)
  redis.call('HSET', KEYS[1], 'skipped', tonumber(h[3]) - tonumber(h[4]) - tonumber(h[5]),
    'finished_at', now_ms)
  job_ended(KEYS[1], KEYS[4], KEYS[5], ARGV[3], now_ms)
end
return 1
