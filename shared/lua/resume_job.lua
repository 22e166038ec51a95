-- Resume a paused job: back to where it was, with its window of chunks released again
-- (minus those still out in the stream).
-- KEYS: 1 job hash, 2 backlog, 3 shard work stream, 4 shard job stats, 5 shard ended jobs,
--       6 shard due callbacks
-- ARGV: 1 window if the job has none of its own, 2 job id
-- Returns the job's status after the call ('missing' if it does not exist).
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 'missing' end
if status ~= 'paused' then return status end
local t = redis.call('TIME')
local now_ms = t[1] * 1000 + math.floor(t[2] / 1000)
local h = redis.call('HMGET', KEYS[1], 'paused_from', 'send_at', 'started_at', 'released', 'acked',
  'total', 'sent', 'failed', 'skipped')
local next_status = 'pending'
if h[3] then next_status = 'running' end
if h[1] == 'scheduled' and tonumber(h[2] or '0') > now_ms then
  next_status = 'scheduled'  -- still in the scheduled set; released when due
end
redis.call('HINCRBY', KEYS[4], 'paused', -1)
local paused_at = tonumber(redis.call('HGET', KEYS[1], 'paused_at') or '0')
if paused_at > 0 and h[3] and paused_at > tonumber(h[3]) then
  -- time spent paused after the start, left out of the job's rate (shared/jobview.py)
  redis.call('HINCRBY', KEYS[1], 'paused_ms', math.max(0, now_ms - paused_at))
end
redis.call('HDEL', KEYS[1], 'paused_at')
-- A fresh failure window: a job resumed after an auto-pause pauses again only on what it
-- sends from now on (lib.lua's failure_rate).
redis.call('HDEL', KEYS[1], 'fr_n', 'fr_f', 'fr_pn', 'fr_pf', 'auto_paused')
redis.call('HDEL', KEYS[1], 'reason')  -- a paused job's reason said why it was paused
if next_status ~= 'scheduled'
    and tonumber(h[7]) + tonumber(h[8]) + tonumber(h[9]) >= tonumber(h[6]) then
  redis.call('HSET', KEYS[1], 'status', 'completed', 'finished_at', now_ms)
  redis.call('HINCRBY', KEYS[4], 'completed', 1)
  job_ended(KEYS[1], KEYS[5], KEYS[6], ARGV[2], now_ms)
  return 'completed'
end
redis.call('HSET', KEYS[1], 'status', next_status)
redis.call('HINCRBY', KEYS[4], next_status, 1)
if next_status ~= 'scheduled' then
  local out = tonumber(h[4]) - tonumber(h[5])
  local window = tonumber(redis.call('HGET', KEYS[1], 'window') or ARGV[1])
  release_chunks(KEYS[1], KEYS[2], KEYS[3], window - out)
end
return next_status
