-- After a chunk's POSTs: record outcomes, acknowledge the entry, release the job's next chunk,
-- and complete the job when its counts reach the total. One call per chunk.
-- Counters move only when a ledger bit flips, and the next chunk is released only by the call
-- whose XACK removed the entry, so a retried call or a zombie consumer changes nothing twice.
-- KEYS: 1 job hash, 2 sent, 3 failed, 4 errors, 5 shard work stream, 6 backlog, 7 dead stream,
--       8 indoubt, 9 shard job stats, 10 shard ended jobs, 11 shard due callbacks,
--       12 fallback, 13 series (the job page's chart) (12, 13 absent from older callers)
-- ARGV: 1 group, 2 entry id, 3 outcome (msgpack [[sent pos...], [[pos, recipient, code,
--       subcode, message, attempts]...], [doubtful pos...]]: each doubtful entry is one send
--       that may have reached the person twice, see record_outcome), 4 dead-letter reason
--       ('' if none), 5 chunk payload (kept in the dead stream, or put back), 6 errors stream cap, 7 job id, 8 '1' when the
--       consumer stopped early because the job was paused: the chunk goes back for later
if redis.call('EXISTS', KEYS[1]) == 0 then
  -- The job expired or was deleted: only settle the entry.
  local acked = redis.call('XACK', KEYS[5], ARGV[1], ARGV[2])
  redis.call('XDEL', KEYS[5], ARGV[2])
  return {0, 0, acked, 0, 'missing'}
end
local sent, failed = record_outcome(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[8],
  cmsgpack.unpack(ARGV[3]), ARGV[6], KEYS[12])
series_add(KEYS[13], sent, failed)

local acked = redis.call('XACK', KEYS[5], ARGV[1], ARGV[2])
local released = 0
if acked == 1 then
  redis.call('XDEL', KEYS[5], ARGV[2])
  redis.call('HINCRBY', KEYS[1], 'acked', 1)
  if ARGV[4] ~= '' then
    redis.call('XADD', KEYS[7], 'MAXLEN', '~', 10000, '*', 'c', ARGV[5], 'reason', ARGV[4])
  end
  local status = redis.call('HGET', KEYS[1], 'status')
  if ARGV[8] == '1' and status == 'paused' then
    redis.call('LPUSH', KEYS[6], ARGV[5])  -- its unfinished recipients wait for resume
  elseif ARGV[8] == '1' and (status == 'pending' or status == 'running') then
    redis.call('XADD', KEYS[5], '*', 'c', ARGV[5])  -- resumed meanwhile: straight back out
    redis.call('HINCRBY', KEYS[1], 'released', 1)
  elseif status == 'pending' or status == 'running' then
    released = release_chunks(KEYS[1], KEYS[6], KEYS[5], 1)
  end
end

local h = redis.call('HMGET', KEYS[1], 'status', 'total', 'sent', 'failed', 'skipped',
  'released', 'acked', 'finished_at')
local status = h[1]
local t = redis.call('TIME')
local now_ms = t[1] * 1000 + math.floor(t[2] / 1000)
if (status == 'pending' or status == 'running')
    and tonumber(h[3]) + tonumber(h[4]) + tonumber(h[5]) >= tonumber(h[2]) then
  redis.call('HSET', KEYS[1], 'status', 'completed', 'finished_at', now_ms)
  redis.call('HINCRBY', KEYS[9], status, -1)
  redis.call('HINCRBY', KEYS[9], 'completed', 1)
  status = 'completed'
  job_ended(KEYS[1], KEYS[10], KEYS[11], ARGV[7], now_ms)
elseif (status == 'failed' or status == 'cancelled') and not h[8]
    and tonumber(h[6]) == tonumber(h[7]) then
  -- The last chunk in flight of a stopped job: whoever was not reached is skipped.
  redis.call('HSET', KEYS[1], 'skipped', tonumber(h[2]) - tonumber(h[3]) - tonumber(h[4]),
    'finished_at', now_ms)
  job_ended(KEYS[1], KEYS[10], KEYS[11], ARGV[7], now_ms)
end
return {sent, failed, acked, released, status}
