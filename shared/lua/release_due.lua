-- A scheduled job's send_at has come: make it pending and release its first window.
-- KEYS: 1 job hash, 2 backlog, 3 shard work stream, 4 shard job stats, 5 shard scheduled jobs
-- ARGV: 1 window if the job has none of its own, 2 job id
-- Returns 1 if released, 0 if the job was no longer waiting (cancelled, paused or gone).
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'paused' then
  return 0  -- stays in the scheduled set; resume decides
end
redis.call('ZREM', KEYS[5], ARGV[2])
if status ~= 'scheduled' then return 0 end
redis.call('HSET', KEYS[1], 'status', 'pending')
redis.call('HINCRBY', KEYS[4], 'scheduled', -1)
redis.call('HINCRBY', KEYS[4], 'pending', 1)
release_chunks(KEYS[1], KEYS[2], KEYS[3],
  tonumber(redis.call('HGET', KEYS[1], 'window') or ARGV[1]))
return 1
