-- At dispatch, before any POST: recipients who end skipped with a reason (outside the 24-hour
-- window, suppressed), and those who get the job's utility fallback instead of its message.
-- Counters move only when a bit flips, so a redelivered chunk changes nothing twice, and
-- sent + failed + skipped == total still holds; the chunk's finish completes the job.
-- KEYS: 1 job hash, 2 sent, 3 failed, 4 skipped, 5 skips stream, 6 fallback
-- ARGV: 1 msgpack [[pos, recipient, code, message]...], 2 msgpack [pos...] sent the fallback,
--       3 skips stream cap
-- Returns a flat list: code, how many became skipped with it, ...
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'pending' and status ~= 'running' then
  return {}  -- stopped or ended: the finish counts whoever was not reached
end
local skipped, by_code = 0, {}
for _, s in ipairs(cmsgpack.unpack(ARGV[1])) do
  local p = s[1]
  if redis.call('GETBIT', KEYS[2], p) == 0 and redis.call('GETBIT', KEYS[3], p) == 0
      and redis.call('SETBIT', KEYS[4], p, 1) == 0 then
    skipped = skipped + 1
    by_code[s[3]] = (by_code[s[3]] or 0) + 1
    redis.call('HINCRBY', KEYS[1], 'skip:' .. s[3], 1)
    redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[3], '*', 'recipient', s[2], 'code', s[3],
      'subcode', '', 'message', s[4], 'attempts', 0)
  end
end
if skipped > 0 then redis.call('HINCRBY', KEYS[1], 'skipped', skipped) end
for _, p in ipairs(cmsgpack.unpack(ARGV[2])) do redis.call('SETBIT', KEYS[6], p, 1) end
local out = {}
for code, count in pairs(by_code) do
  out[#out + 1] = code
  out[#out + 1] = count
end
return out
