-- Renew (idle 0) or hand back (a large idle, so the next XAUTOCLAIM by anyone takes them at
-- once) the entries this consumer holds. XCLAIM itself does not check the owner, so a blind
-- renewal would steal an entry back from whoever reclaimed it: check the owner first.
-- KEYS: 1 the stream, 2 its lease clock (see lib.lua)
-- ARGV: 1 group, 2 consumer, 3 idle ms to set, 4 stall gap ms, 5 quiet ms, 6.. entry ids
-- Returns the ids this consumer no longer holds.
lease_clock(KEYS[2], tonumber(ARGV[4]), tonumber(ARGV[5]))
local lost = {}
for i = 6, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if p[1] and p[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'IDLE', ARGV[3], 'JUSTID')
  else
    lost[#lost + 1] = ARGV[i]
  end
end
return lost
