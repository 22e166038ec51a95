-- Record a person's interaction with a page. KEYS[1..#KEYS-1] = the PSID's window bucket in
-- each tier, smallest first (small hashes PSID -> unix seconds); KEYS[#KEYS] = the page's heard
-- hash (first, last, tier, n). ARGV: psid, ts (unix seconds of the event), keep (seconds an
-- interaction is remembered), prune_every (seconds), then each tier's people limit.
-- Meta retries and reorders events: the newest timestamp wins, so a replay changes nothing.
local heard = KEYS[#KEYS]
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
-- A page writes into one tier of buckets, sized for how many people it has heard from, so a
-- small page keeps a few full buckets and a big one many (each stays a listpack). A page that
-- outgrows its tier moves up; what the smaller tier holds expires there within `keep`, and
-- readers take the newest time over every tier.
local tier = tonumber(redis.call('HGET', heard, 'tier')) or 1
local bucket = KEYS[tier]
local old = tonumber(redis.call('HGET', bucket, psid))
local changed = 0
if old == nil or ts > old then
  redis.call('HSET', bucket, psid, ts)
  changed = 1
end
if old == nil then
  local n = redis.call('HINCRBY', heard, 'n', 1)
  if tier < #KEYS - 1 and n > tonumber(ARGV[4 + tier]) then
    redis.call('HSET', heard, 'tier', tier + 1, 'n', 0)
  end
end
-- Redis 7.0 has no per-field expiry: the bucket drops its stale entries itself, at most once
-- per prune_every (its field '~' says when it last did), and the whole bucket expires when no
-- one in it has been heard from for `keep`.
local pruned = tonumber(redis.call('HGET', bucket, '~'))
if pruned == nil or pruned <= now - prune_every then
  local flat = redis.call('HGETALL', bucket)
  local gone = 0
  for i = 1, #flat, 2 do
    if flat[i] ~= '~' and tonumber(flat[i + 1]) <= now - keep then
      redis.call('HDEL', bucket, flat[i])
      gone = gone + 1
    end
  end
  if gone > 0 then redis.call('HINCRBY', heard, 'n', -gone) end
  redis.call('HSET', bucket, '~', now)
end
redis.call('EXPIRE', bucket, keep)
return changed
