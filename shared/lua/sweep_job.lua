-- Retention: delete an ended job's keys and forget it, so memory does not grow with history.
-- KEYS: 1 job hash, 2 backlog, 3 attempted, 4 sent, 5 failed, 6 indoubt, 7 errors,
--       8 shard ended jobs, 9 shard job stats, 10 tenant's job index, then any more of the
--       job's keys to delete (skipped, fallback, skips, ...)
-- ARGV: 1 job id
local status = redis.call('HGET', KEYS[1], 'status')
if status then
  redis.call('HINCRBY', KEYS[9], status, -1)
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7])
for i = 11, #KEYS do redis.call('DEL', KEYS[i]) end
redis.call('ZREM', KEYS[8], ARGV[1])
redis.call('ZREM', KEYS[10], ARGV[1])
return 1
