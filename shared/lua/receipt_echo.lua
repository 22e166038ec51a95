-- The echo of one of our sends (its metadata names job and position; Meta's timestamp is the
-- send time receipts are measured against): keep a 13-byte record of it in the person's
-- bucket, unless a read already covers it, and answer what the watermarks that came before
-- the echo already say (Meta does not promise order).
-- Record: fingerprint (5) | job ref (12 bits) and position (28 bits) (5) | ms since the ref's
-- base (3). A ref names a job and a span of 2^24 ms (4.7 h) of its sends, so a long job takes
-- a few. Ref 0 (delivery) and 4095 (read) hold a watermark of the person instead: ms in the
-- position and offset fields (position * 2^24 + offset).
-- The bucket is rewritten whole with SET (not APPEND, whose spare capacity would cost up to
-- as much again).
-- KEYS: 1 bucket, 2 the page's job refs (both in the page's slot)
-- ARGV: 1 fingerprint, 2 job id, 3 position, 4 echo timestamp ms, 5 keep ms
-- Returns {delivered 0|1, read 0|1}
local fp, job = ARGV[1], ARGV[2]
local pos, ts, keep = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local SPAN, REFS = 16777216, 268435456 -- 2^24 ms per ref; 2^28: ref * REFS + position
if pos >= REFS then return {0, 0} end
local epoch = math.floor(ts / SPAN)
local name = job .. '@' .. epoch
local ref = tonumber(redis.call('HGET', KEYS[2], 'j:' .. name))
if not ref then
  -- 1..4094, reused after that many (job, span)s of the page: the old one's records drop
  ref = (redis.call('HINCRBY', KEYS[2], 'next', 1) - 1) % 4094 + 1
  local old = redis.call('HGET', KEYS[2], 'r:' .. ref)
  if old then redis.call('HDEL', KEYS[2], 'j:' .. old) end
  redis.call('HSET', KEYS[2], 'j:' .. name, ref, 'r:' .. ref, name)
end
redis.call('PEXPIRE', KEYS[2], keep)
local dts = ts - epoch * SPAN
local data = redis.call('GET', KEYS[1]) or ''
local dwm, rwm, dup = 0, 0, false
local me = ref * REFS + pos
for i = 1, #data, 13 do
  if string.sub(data, i, i + 4) == fp then
    local rp, b = struct.unpack('>I5I3', data, i + 5)
    local r = math.floor(rp / REFS)
    if r == 0 then dwm = (rp % REFS) * SPAN + b
    elseif r == 4095 then rwm = (rp % REFS) * SPAN + b
    elseif rp == me then dup = true end
  end
end
local read = (rwm > 0 and ts <= rwm) and 1 or 0
local delivered = (read == 1 or (dwm > 0 and ts < dwm)) and 1 or 0
if read == 0 and not dup then
  redis.call('SET', KEYS[1], data .. fp .. struct.pack('>I5I3', me, dts), 'PX', keep)
else
  redis.call('PEXPIRE', KEYS[1], keep)
end
return {delivered, read}
