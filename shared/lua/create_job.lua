-- Make a job visible and release its first window of chunks, atomically.
-- The backlog was written before (pipelined RPUSH, with an expiry in case the producer died
-- half-way); this script is the commit point: PERSIST the backlog, write the hash, release.
-- With an idempotency key already used, it creates nothing and answers the first job instead.
-- KEYS: 1 job hash, 2 backlog, 3 shard work stream, 4 tenant's job index, 5 shard job stats,
--       6 shard scheduled jobs, 7 idempotency key (or a dummy of the same slot, unused)
-- ARGV: 1 job id, 2 window (chunks to release), 3 job fields (msgpack map), 4 send_at ms (0:
--       now), 5 request fingerprint ('' without an idempotency key), 6 idempotency TTL s
-- Returns {job id, 'created' | 'existing' | 'conflict'}.
if ARGV[5] ~= '' then
  local seen = redis.call('GET', KEYS[7])
  if seen then
    redis.call('DEL', KEYS[2])
    local sep = string.find(seen, '|', 1, true)
    local first = string.sub(seen, 1, sep - 1)
    if string.sub(seen, sep + 1) == ARGV[5] then
      return {first, 'existing'}
    end
    return {first, 'conflict'}
  end
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  return {ARGV[1], 'created'}  -- a retried call after a lost reply: already created
end
local t = redis.call('TIME')
local now_ms = t[1] * 1000 + math.floor(t[2] / 1000)
local fields = cmsgpack.unpack(ARGV[3])
local args = {}
for k, v in pairs(fields) do
  args[#args + 1] = k
  args[#args + 1] = v
end
local send_at = tonumber(ARGV[4])
local status = 'pending'
if send_at > now_ms then status = 'scheduled' end
redis.call('HSET', KEYS[1], 'status', status, 'created_at', now_ms,
  'sent', 0, 'failed', 0, 'skipped', 0, 'indoubt', 0, unpack(args))
redis.call('PERSIST', KEYS[2])
local released = 0
if status == 'scheduled' then
  redis.call('HSET', KEYS[1], 'send_at', send_at)
  redis.call('ZADD', KEYS[6], send_at, ARGV[1])
else
  released = release_chunks(KEYS[1], KEYS[2], KEYS[3], tonumber(ARGV[2]))
end
redis.call('HSET', KEYS[1], 'released', released, 'acked', 0)
redis.call('ZADD', KEYS[4], now_ms, ARGV[1])
redis.call('HINCRBY', KEYS[5], status, 1)
if ARGV[5] ~= '' then
  redis.call('SET', KEYS[7], ARGV[1] .. '|' .. ARGV[5], 'EX', ARGV[6])
end
return {ARGV[1], 'created'}
