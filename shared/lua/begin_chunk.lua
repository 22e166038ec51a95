-- Before a chunk's POSTs: mark its unfinished recipients attempted, in one call per chunk.
-- A second delivery of the chunk never sends a finished recipient again.
-- Per recipient it answers a state character:
--   '0' fresh (send it), '1' finished (skip it), '2' attempted before but unfinished: in doubt,
--   the earlier holder may or may not have reached the provider (resend it; `indoubt` counts
--   this send, so a recipient found in doubt on each of two redeliveries counts 2).
-- A call retried after its reply was lost finds its own marks and counts them in doubt: an
-- over-count, never an under-count.
-- KEYS: 1 job hash, 2 attempted, 3 sent, 4 failed, 5 indoubt, 6 shard job stats, 7 skipped at
--       dispatch (absent from older callers)
-- ARGV: 1 start position, 2 count
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'missing', ''}
end
local status = redis.call('HGET', KEYS[1], 'status')
local states = {}
if status == 'pending' or status == 'running' then
  local start = tonumber(ARGV[1])
  local new_doubts = 0
  for i = 0, tonumber(ARGV[2]) - 1 do
    local p = start + i
    if redis.call('GETBIT', KEYS[3], p) == 1 or redis.call('GETBIT', KEYS[4], p) == 1
        or (KEYS[7] and redis.call('GETBIT', KEYS[7], p) == 1) then
      states[#states + 1] = '1'
    elseif redis.call('SETBIT', KEYS[2], p, 1) == 1 then
      -- Counted per send, not per recipient: each resend may be one more duplicate.
      states[#states + 1] = '2'
      redis.call('SETBIT', KEYS[5], p, 1)
      new_doubts = new_doubts + 1
    else
      states[#states + 1] = '0'
    end
  end
  if new_doubts > 0 then
    redis.call('HINCRBY', KEYS[1], 'indoubt', new_doubts)
  end
  if status == 'pending' then
    local t = redis.call('TIME')
    redis.call('HSET', KEYS[1], 'status', 'running',
      'started_at', t[1] * 1000 + math.floor(t[2] / 1000))
    redis.call('HINCRBY', KEYS[6], 'pending', -1)
    redis.call('HINCRBY', KEYS[6], 'running', 1)
    status = 'running'
  end
end
return {status, table.concat(states)}
