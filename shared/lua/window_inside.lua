-- Who of these people is inside their 24-hour window with a page (or WhatsApp number): one
-- call for a batch of thousands. The people come packed in one argument, because a client
-- packs each argument of a command separately (redis-py: ~8 us each, more than Redis spends).
-- KEYS[1]: the page's heard hash (first, last, tier, n; window_touch.lua).
-- ARGV: 1 since (unix seconds: a later interaction is inside the window), 2 the page's bucket
--       key prefix (keys.window_bucket without the number), 3 each tier's first bucket
--       number and size, as "offset:size,offset:size,...", smallest tier first, 4 the people,
--       as "person crc32 person crc32 ..." (crc32 of the person, as window.bucket_keys).
-- Bucket keys are built here from the prefix: all are in KEYS[1]'s slot ({page} hash tag),
-- so the script reads nothing beyond the node KEYS[1] names.
-- Returns one character per person: "1" inside the window, "0" not.
local since, prefix = tonumber(ARGV[1]), ARGV[2]
local heard = redis.call('HMGET', KEYS[1], 'last', 'tier')
local people = {}
for person, crc in string.gmatch(ARGV[4], '(%S+) (%S+)') do
  people[#people + 1] = {person, tonumber(crc)}
end
-- Nobody heard from in 24 h (or ever: a fresh number's first campaign): nobody is inside.
if not heard[1] or tonumber(heard[1]) <= since then
  return string.rep('0', #people)
end
-- People are written to tiers 1..tier only (window_touch.lua).
local used = tonumber(heard[2]) or 1
local tiers = {}
for offset, size in string.gmatch(ARGV[3], '(%d+):(%d+)') do
  if #tiers < used then tiers[#tiers + 1] = {tonumber(offset), tonumber(size)} end
end
local flags = {}
for i, entry in ipairs(people) do
  local flag = '0'
  for _, tier in ipairs(tiers) do
    local last = redis.call('HGET', prefix .. (tier[1] + entry[2] % tier[2]), entry[1])
    if last and tonumber(last) > since then
      flag = '1'
      break
    end
  end
  flags[i] = flag
end
return table.concat(flags)
