-- One WhatsApp status webhook (services/consumer/wa_events.py) applied to a job's receipts, in
-- any order and any number of times: sent < delivered < read as bits that only ever flip on.
--   read       flips read, and delivered (Meta skips 'delivered' when both happen at once)
--   delivered  flips delivered
--   failed     flips the job's undelivered bit (a failed status was received) and records the
--              error once in the job's errors stream; sent/failed/skipped are not touched (Meta
--              had accepted the send); the caller acts on the code once, when this flips
-- The job's `undelivered` counts recipients with a failed status and no delivered one: a
-- delivery on another device after the failure takes them out of it, whichever comes first.
-- Counters move only when a bit flips, so a duplicate or an older status changes nothing. A job
-- already swept is not recreated, and a job of another number is not touched.
-- KEYS: 1 job hash, 2 delivered bitmap, 3 read bitmap, 4 undelivered bitmap, 5 errors stream,
--       6 the job's series
-- ARGV: 1 'delivered' | 'read' | 'failed', 2 the number the status is about, 3 position,
--       4 recipient, 5 error code, 6 error text, 7 errors stream cap,
--       8 pricing category when Meta says billable ('' if not)
-- Returns {delivered flipped, read flipped, undelivered change (-1, 0 or 1), failed flipped}
local job = redis.call('HMGET', KEYS[1], 'total', 'page_id')
local total = tonumber(job[1] or '0')
if total == 0 or job[2] ~= ARGV[2] then return {0, 0, 0, 0} end
local pos = tonumber(ARGV[3])
if not pos or pos < 0 or pos >= total then return {0, 0, 0, 0} end
local kind = ARGV[1]
local d, r, u, f = 0, 0, 0, 0
if kind == 'failed' then
  if redis.call('SETBIT', KEYS[4], pos, 1) == 0 then
    f = 1
    redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[7], '*', 'recipient', ARGV[4],
      'code', ARGV[5], 'subcode', '', 'message', 'not delivered (status webhook): ' .. ARGV[6],
      'attempts', 1)
    if redis.call('GETBIT', KEYS[2], pos) == 0 then u = 1 end
  end
elseif kind == 'delivered' or kind == 'read' then
  if kind == 'read' and redis.call('SETBIT', KEYS[3], pos, 1) == 0 then r = 1 end
  if redis.call('SETBIT', KEYS[2], pos, 1) == 0 then
    d = 1
    if redis.call('GETBIT', KEYS[4], pos) == 1 then u = -1 end
    -- Per-message pricing charges a delivered message: count it once, on its delivery.
    if ARGV[8] ~= '' then redis.call('HINCRBY', KEYS[1], 'billable:' .. ARGV[8], 1) end
  end
end
if d > 0 then redis.call('HINCRBY', KEYS[1], 'delivered', d) end
if r > 0 then redis.call('HINCRBY', KEYS[1], 'read', r) end
if u ~= 0 then redis.call('HINCRBY', KEYS[1], 'undelivered', u) end
series_add(KEYS[6], 0, 0, d, r)
return {d, r, u, f}
