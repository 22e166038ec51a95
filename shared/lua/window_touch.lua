-- Record a person's interaction with a page: KEYS[1] = the PSID's window bucket (a small hash
-- PSID -> unix seconds), KEYS[2] = the page's heard hash (first, last). ARGV: psid, ts (unix
-- seconds of the event), keep (seconds an interaction is remembered), prune_every (seconds).
-- Meta retries and reorders events: the newest timestamp wins, so a replay changes nothing.
local bucket, heard = KEYS[1], KEYS[2]
local psid, ts = ARGV[1], tonumber(ARGV[2])
local keep, prune_every = tonumber(ARGV[3]), tonumber(ARGV[4])
local now = tonumber(redis.call('TIME')[1])

-- The page's webhooks flow since `first`; a silence longer than `keep` lets the hash expire,
-- so a page unplugged for a week starts counting its 24 hours again.
local first = tonumber(redis.call('HGET', heard, 'first'))
if first == nil or ts < first then redis.call('HSET', heard, 'first', ts) end
local last = tonumber(redis.call('HGET', heard, 'last'))
if last == nil or ts > last then redis.call('HSET', heard, 'last', ts) end
redis.call('EXPIRE', heard, keep)

if ts <= now - keep then return 0 end  -- too old to open any window
local old = tonumber(redis.call('HGET', bucket, psid))
local changed = 0
if old == nil or ts > old then
  redis.call('HSET', bucket, psid, ts)
  changed = 1
end
-- Redis 7.0 has no per-field expiry: the bucket drops its stale entries itself, at most once
-- per prune_every (its field '~' says when it last did), and the whole bucket expires when no
-- one in it has been heard from for `keep`.
local pruned = tonumber(redis.call('HGET', bucket, '~'))
if pruned == nil or pruned <= now - prune_every then
  local flat = redis.call('HGETALL', bucket)
  for i = 1, #flat, 2 do
    if flat[i] ~= '~' and tonumber(flat[i + 1]) <= now - keep then
      redis.call('HDEL', bucket, flat[i])
    end
  end
  redis.call('HSET', bucket, '~', now)
end
redis.call('EXPIRE', bucket, keep)
return changed
