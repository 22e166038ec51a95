-- Make a job visible and release its first window of chunks, atomically.
-- The backlog was written before (pipelined RPUSH, with an expiry in case the producer died
-- half-way); this script is the commit point: PERSIST the backlog, write the hash, release.
-- KEYS: 1 job hash, 2 backlog, 3 shard work stream, 4 tenant's job index, 5 shard job stats
-- ARGV: 1 job id, 2 window (chunks to release), 3 job fields (msgpack map)
if redis.call('EXISTS', KEYS[1]) == 1 then
  return -1  -- a retried call after a lost reply: already created
end
local t = redis.call('TIME')
local now_ms = t[1] * 1000 + math.floor(t[2] / 1000)
local fields = cmsgpack.unpack(ARGV[3])
local args = {}
for k, v in pairs(fields) do
  args[#args + 1] = k
  args[#args + 1] = v
end
redis.call('HSET', KEYS[1], 'status', 'pending', 'created_at', now_ms,
  'sent', 0, 'failed', 0, 'skipped', 0, 'indoubt', 0, unpack(args))
redis.call('PERSIST', KEYS[2])
local released = 0
for _ = 1, tonumber(ARGV[2]) do
  local chunk = redis.call('LPOP', KEYS[2])
  if not chunk then break end
  redis.call('XADD', KEYS[3], '*', 'c', chunk)
  released = released + 1
end
redis.call('HSET', KEYS[1], 'released', released, 'acked', 0)
redis.call('ZADD', KEYS[4], now_ms, ARGV[1])
redis.call('HINCRBY', KEYS[5], 'pending', 1)
return released
