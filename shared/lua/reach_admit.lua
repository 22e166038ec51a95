-- WhatsApp's messaging tier at dispatch: how many unique people a business portfolio may reach
-- outside a service window in a moving 24 h (250, 2,000, 10,000, 100,000). One call per chunk,
-- before any template of it goes out to people outside their window: each person already
-- reached in the last 24 h costs nothing more (their time moves up: they count until 24 h after
-- this send), each new one takes a place while places are left, and the rest are refused, so
-- nothing is sent beyond the tier. A place is taken before the send: a send that then fails
-- still holds it (counting too many is safe, too few would get the business restricted).
-- KEYS: 1 fanout:wa:{<portfolio>}:reached (zset: digits -> ms of the latest such send)
-- ARGV: 1 tier, 2 the moving window in ms (24 h), then the people (digits) about to be sent
-- Returns {flags, wait ms, reached}: flags one character per person, '1' admitted, '0' not;
-- wait: when flags has a '0', the ms until the oldest entry ages out (room returns), else 0;
-- reached: the people in the window after this call.
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local tier, window = tonumber(ARGV[1]), tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local count = redis.call('ZCARD', KEYS[1])
local flags = {}
local refused = false
for i = 3, #ARGV do
  local person = ARGV[i]
  if redis.call('ZSCORE', KEYS[1], person) then
    redis.call('ZADD', KEYS[1], now, person)
    flags[#flags + 1] = '1'
  elseif count < tier then
    redis.call('ZADD', KEYS[1], now, person)
    count = count + 1
    flags[#flags + 1] = '1'
  else
    flags[#flags + 1] = '0'
    refused = true
  end
end
local wait = 0
if refused then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  if oldest[2] then
    wait = math.max(1, math.ceil(tonumber(oldest[2]) + window - now))
  else
    wait = 1000 -- a tier of 0 places: nothing will age out; ask again now and then
  end
end
if count > 0 then
  redis.call('PEXPIRE', KEYS[1], window + 3600000)
end
return {table.concat(flags), wait, count}
