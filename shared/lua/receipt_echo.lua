-- The echo of one of our sends (its metadata names job and position; Meta's timestamp is the
-- send time receipts are measured against): keep a 14-byte record of it in the person's
-- bucket, unless a read already covers it, and answer what the watermarks that came before
-- the echo already say (Meta does not promise order).
-- Record: fingerprint (5) | job ref (12 bits) and position (28 bits) (5) | ms since the ref's
-- base (4). Ref 0 (delivery) and 4095 (read) hold a watermark of the person instead: ms in
-- the position and base fields (position * 2^32 + base offset).
-- The bucket is rewritten whole with SET (not APPEND, whose spare capacity would cost up to
-- as much again).
-- KEYS: 1 bucket, 2 the page's job refs (both in the page's slot)
-- ARGV: 1 fingerprint, 2 job id, 3 position, 4 echo timestamp ms, 5 keep ms
-- Returns {delivered 0|1, read 0|1}
local fp, job = ARGV[1], ARGV[2]
local pos, ts, keep = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local TWO32, REFS = 4294967296, 268435456 -- 2^28: ref * REFS + position
if pos >= REFS then return {0, 0} end
local ref, base
local known = redis.call('HGET', KEYS[2], 'j:' .. job)
if known then
  local sep = string.find(known, ':', 1, true)
  ref = tonumber(string.sub(known, 1, sep - 1))
  base = tonumber(string.sub(known, sep + 1))
else
  -- 1..4094, reused after that many jobs of the page: the old job's records are dropped
  ref = (redis.call('HINCRBY', KEYS[2], 'next', 1) - 1) % 4094 + 1
  local old = redis.call('HGET', KEYS[2], 'r:' .. ref)
  if old then redis.call('HDEL', KEYS[2], 'j:' .. old) end
  base = ts - 86400000 -- echoes of one job may come a day out of order
  redis.call('HSET', KEYS[2], 'j:' .. job, ref .. ':' .. base, 'r:' .. ref, job)
end
redis.call('PEXPIRE', KEYS[2], keep)
local dts = ts - base
if dts < 0 or dts >= TWO32 then return {0, 0} end
local data = redis.call('GET', KEYS[1]) or ''
local dwm, rwm, dup = 0, 0, false
local me = ref * REFS + pos
for i = 1, #data, 14 do
  if string.sub(data, i, i + 4) == fp then
    local rp, b = struct.unpack('>I5I4', data, i + 5)
    local r = math.floor(rp / REFS)
    if r == 0 then dwm = (rp % REFS) * TWO32 + b
    elseif r == 4095 then rwm = (rp % REFS) * TWO32 + b
    elseif rp == me then dup = true end
  end
end
local read = (rwm > 0 and ts <= rwm) and 1 or 0
local delivered = (read == 1 or (dwm > 0 and ts < dwm)) and 1 or 0
if read == 0 and not dup then
  redis.call('SET', KEYS[1], data .. fp .. struct.pack('>I5I4', me, dts), 'PX', keep)
else
  redis.call('PEXPIRE', KEYS[1], keep)
end
return {delivered, read}
