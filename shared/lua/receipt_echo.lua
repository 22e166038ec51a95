-- The echo of one of our sends (its metadata names job and position; Meta's timestamp is the
-- send time receipts are measured against): keep a 16-byte record of it in the person's
-- bucket, unless a read already covers it, and answer what the watermarks that came before
-- the echo already say (Meta does not promise order).
-- Records, 16 bytes each: fingerprint (6) | job ref (2) | position (4) | ms since ref base (4);
-- job ref 0 (delivery) and 65535 (read) hold the person's watermark in the last 8 bytes.
-- KEYS: 1 bucket, 2 the page's job refs (both in the page's slot)
-- ARGV: 1 fingerprint, 2 job id, 3 position, 4 echo timestamp ms, 5 keep ms
-- Returns {delivered 0|1, read 0|1}
local fp, job = ARGV[1], ARGV[2]
local pos, ts, keep = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local ref, base
local known = redis.call('HGET', KEYS[2], 'j:' .. job)
if known then
  local sep = string.find(known, ':', 1, true)
  ref = tonumber(string.sub(known, 1, sep - 1))
  base = tonumber(string.sub(known, sep + 1))
else
  -- 1..65534, reused after that many jobs of the page: the old job's records are dropped
  ref = (redis.call('HINCRBY', KEYS[2], 'next', 1) - 1) % 65534 + 1
  local old = redis.call('HGET', KEYS[2], 'r:' .. ref)
  if old then redis.call('HDEL', KEYS[2], 'j:' .. old) end
  base = ts - 86400000 -- echoes of one job may come a day out of order
  redis.call('HSET', KEYS[2], 'j:' .. job, ref .. ':' .. base, 'r:' .. ref, job)
end
redis.call('PEXPIRE', KEYS[2], keep)
local dts = ts - base
if dts < 0 or dts >= 4294967296 then return {0, 0} end
local data = redis.call('GET', KEYS[1]) or ''
local dwm, rwm, dup = 0, 0, false
for i = 1, #data, 16 do
  if string.sub(data, i, i + 5) == fp then
    local r, a, b = struct.unpack('>I2I4I4', data, i + 6)
    if r == 0 then dwm = a * 4294967296 + b
    elseif r == 65535 then rwm = a * 4294967296 + b
    elseif r == ref and a == pos then dup = true end
  end
end
local read = (rwm > 0 and ts <= rwm) and 1 or 0
local delivered = (read == 1 or (dwm > 0 and ts < dwm)) and 1 or 0
if read == 0 and not dup then
  redis.call('APPEND', KEYS[1], fp .. struct.pack('>I2I4I4', ref, pos, dts))
end
redis.call('PEXPIRE', KEYS[1], keep)
return {delivered, read}
