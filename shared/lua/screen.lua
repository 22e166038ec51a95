-- At dispatch, before any POST: who of a chunk is suppressed or outside the 24-hour window.
-- Read-only; one call per chunk instead of a command per recipient and tier.
-- KEYS: for each of n recipients its suppression bucket; then, when the window is required,
--       for each recipient (in order) its window bucket in each of the T tiers
-- ARGV: 1 n, 2 T (0: the window is not required), 3 the window in seconds, 4 '1' to check
--       suppressions, then the n PSIDs
-- Returns one character per recipient: 's' suppressed, 'c' outside the window, '.' send.
local n, tiers, window_s = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local suppress = ARGV[4] == '1'
local now = tonumber(redis.call('TIME')[1])
local out = {}
for i = 1, n do
  local psid = ARGV[4 + i]
  local verdict = '.'
  if suppress and redis.call('HEXISTS', KEYS[i], psid) == 1 then
    verdict = 's'
  elseif tiers > 0 then
    local newest = 0
    local base = n + (i - 1) * tiers
    for t = 1, tiers do
      local ts = tonumber(redis.call('HGET', KEYS[base + t], psid))
      if ts and ts > newest then newest = ts end
    end
    if now - newest >= window_s then verdict = 'c' end
  end
  out[i] = verdict
end
return table.concat(out)
