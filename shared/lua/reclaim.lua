-- Take over entries idle past the lease, with each one's delivery count (XAUTOCLAIM does not
-- say it), so the caller can dead-letter a chunk that keeps failing.
-- KEYS: 1 the stream, 2 its lease clock (see lib.lua)
-- ARGV: 1 group, 2 consumer, 3 min idle ms (the lease), 4 start id, 5 count, 6 stall gap ms,
--       7 quiet ms (see lib.lua lease_clock)
-- Returns {next cursor, {{id, fields, deliveries}...}, {deleted ids}}: the deleted ids were
-- pending but no longer in the stream; XAUTOCLAIM has already dropped them from the PEL.
-- Right after Redis was stalled for longer than a lease it takes nothing (cursor 0-0).
if lease_clock(KEYS[2], tonumber(ARGV[6]), tonumber(ARGV[7])) then
  return {'0-0', {}, {}}
end
local r = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], 'COUNT', ARGV[5])
local entries = {}
for _, e in ipairs(r[2]) do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], e[1], e[1], 1)
  local deliveries = 0
  if p[1] then deliveries = p[1][4] end
  entries[#entries + 1] = {e[1], e[2], deliveries}
end
return {r[1], entries, r[3] or {}}
