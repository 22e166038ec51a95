-- A delivery or read watermark for one person: every message sent to them before it
-- (delivery: before; read: at or before) is delivered (read). Answers the (job, position)s
-- it covers; drops the records that can learn nothing more (read ones), those aged out and
-- those whose job reference was reused; keeps the newest watermark for echoes still to come.
-- Record layout: receipt_echo.lua.
-- KEYS: 1 bucket, 2 the page's job refs
-- ARGV: 1 fingerprint, 2 'd' | 'r', 3 watermark ms, 4 keep ms, 5 now ms
-- Returns {job, position, job, position, ...}
local fp, kind = ARGV[1], ARGV[2]
local wm, keep, now = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local marker = 0
if kind == 'r' then marker = 65535 end
local data = redis.call('GET', KEYS[1]) or ''
local out, kept, jobs = {}, {}, {}
local stored = 0
for i = 1, #data, 16 do
  local rec = string.sub(data, i, i + 15)
  local mine = string.sub(rec, 1, 6) == fp
  local r, a, b = struct.unpack('>I2I4I4', rec, 7)
  local keepit = true
  if r == 0 or r == 65535 then
    local w = a * 4294967296 + b
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
      if name then
        local known = redis.call('HGET', KEYS[2], 'j:' .. name)
        if known then
          local sep = string.find(known, ':', 1, true)
          if tonumber(string.sub(known, 1, sep - 1)) == r then
            j = {name, tonumber(string.sub(known, sep + 1))}
          end
        end
      end
      jobs[r] = j
    end
    if not j then
      keepit = false
    else
      local ts = j[2] + b
      if ts < now - keep then
        keepit = false
      elseif mine and ((marker == 0 and ts < wm) or (marker == 65535 and ts <= wm)) then
        out[#out + 1] = j[1]
        out[#out + 1] = a
        if marker == 65535 then keepit = false end
      end
    end
  end
  if keepit then kept[#kept + 1] = rec end
end
local w = math.max(stored, wm)
kept[#kept + 1] = fp .. struct.pack('>I2I4I4', marker, math.floor(w / 4294967296), w % 4294967296)
redis.call('SET', KEYS[1], table.concat(kept), 'PX', keep)
return out
