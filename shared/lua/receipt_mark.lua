-- A delivery or read watermark for one person: every message sent to them before it
-- (delivery: before; read: at or before) is delivered (read). Answers the (job, position)s
-- it covers; drops the records that can learn nothing more (read ones), those aged out and
-- those whose job reference was reused. A watermark that covered nothing is kept (its echo
-- may still come; a kept one only ever moves forward), for a day.
-- Record layout: receipt_echo.lua.
-- KEYS: 1 bucket, 2 the page's job refs
-- ARGV: 1 fingerprint, 2 'd' | 'r', 3 watermark ms, 4 keep ms, 5 now ms
-- Returns {job, position, job, position, ...}
local fp, kind = ARGV[1], ARGV[2]
local wm, keep, now = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local SPAN, REFS = 16777216, 268435456
local marker = 0
if kind == 'r' then marker = 4095 end
local data = redis.call('GET', KEYS[1]) or ''
local out, kept, jobs = {}, {}, {}
local stored = 0
for i = 1, #data, 13 do
  local rec = string.sub(data, i, i + 12)
  local mine = string.sub(rec, 1, 5) == fp
  local rp, b = struct.unpack('>I5I3', rec, 6)
  local r, pos = math.floor(rp / REFS), rp % REFS
  local keepit = true
  if r == 0 or r == 4095 then
    local w = pos * SPAN + b
    if mine and r == marker then
      stored = w
      keepit = false -- written again below
    elseif w < now - 86400000 then
      keepit = false -- an echo a day late is not coming
    end
  else
    local j = jobs[r]
    if j == nil then
      j = false
      local name = redis.call('HGET', KEYS[2], 'r:' .. r)
      if name and tonumber(redis.call('HGET', KEYS[2], 'j:' .. name)) == r then
        local at = string.find(name, '@', 1, true)
        j = {string.sub(name, 1, at - 1), tonumber(string.sub(name, at + 1)) * SPAN}
      end
      jobs[r] = j
    end
    if not j then
      keepit = false
    else
      local ts = j[2] + b
      if ts < now - keep then
        keepit = false
      elseif mine and ((marker == 0 and ts < wm) or (marker == 4095 and ts <= wm)) then
        out[#out + 1] = j[1]
        out[#out + 1] = pos
        if marker == 4095 then keepit = false end
      end
    end
  end
  if keepit then kept[#kept + 1] = rec end
end
if #out == 0 or stored > 0 then
  local w = math.max(stored, wm)
  kept[#kept + 1] = fp .. struct.pack('>I5I3', marker * REFS + math.floor(w / SPAN), w % SPAN)
end
if #kept == 0 then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], table.concat(kept), 'PX', keep)
end
return out
