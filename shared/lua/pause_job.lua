-- Pause a job fleet-wide: nothing more is released, and consumers that meet the status at
-- their next permit batch stop and put the rest of their chunk back at the backlog's front.
-- Sends already in flight finish and are recorded.
-- KEYS: 1 job hash, 2 shard job stats
-- ARGV: 1 why, when not a user's request (e.g. Meta restricted the page); '' for none
-- Returns the job's status after the call ('missing' if it does not exist).
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 'missing' end
if status == 'pending' or status == 'running' or status == 'scheduled' then
  local t = redis.call('TIME')
  -- paused_at: the job's rate and ETA count only the time it was not paused (shared/jobview.py)
  redis.call('HSET', KEYS[1], 'status', 'paused', 'paused_from', status,
    'paused_at', t[1] * 1000 + math.floor(t[2] / 1000))
  if ARGV[1] and ARGV[1] ~= '' then redis.call('HSET', KEYS[1], 'reason', ARGV[1]) end
  redis.call('HINCRBY', KEYS[2], status, -1)
  redis.call('HINCRBY', KEYS[2], 'paused', 1)
  return 'paused'
end
return status
