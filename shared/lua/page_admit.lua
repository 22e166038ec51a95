-- Admit a new job for a page: refused while Meta restricts the page; otherwise listed in the
-- page's jobs, so a restriction found later pauses it too. Checked and listed in one call, so
-- no job slips between a restriction and its pause. Entries older than the retention go.
-- KEYS: 1 page state, 2 page jobs
-- ARGV: 1 job id, 2 retention ms
-- Returns '' when admitted, else the restriction's reason.
if redis.call('HGET', KEYS[1], 'restricted') then
  return redis.call('HGET', KEYS[1], 'reason') or 'page restricted'
end
local t = redis.call('TIME')
local now_ms = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('ZADD', KEYS[2], now_ms, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now_ms - tonumber(ARGV[2]))
return ''
