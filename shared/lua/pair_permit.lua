-- The last permit before a POST, fleet-wide, in the sender's slot: WhatsApp's pair limit (one
-- message per interval from one number to one person; above it, error 131056) and, for a
-- sender whose rate must hold in every second (a number's mps), its log of recent sends.
-- The pair permit is held from before the POST until the pair interval after its answer: Meta
-- counts from when the message reached it, which is before the answer came back, so timing the
-- interval from the answer keeps two sends to a person at least the interval apart at Meta
-- whatever the requests' latencies.
-- The send log is checked here, just before the request goes out, because the GCRA's permits
-- are taken earlier (a chunk's batch, then the senders' queue): a permit used late followed by
-- one used on time would put two sends closer than the rate allows. The log admits at most
-- `cap` sends in any `window` ms (a second plus the lateness still possible after this call).
-- KEYS: 1 fanout:wa:{<number>}:pair:<to>, 2 fanout:rate:{<number>}:sent (optional)
-- ARGV: 1 mode, 2 ms, then for take: 3 cap (0: no log), 4 window ms, 5 the recipient
--   take  ms = how long the pair permit may stay in flight (the interval plus the request
--         timeout, so a consumer that died mid-request frees it by itself; 0: no pair limit).
--         Returns 0 when the send may go now (the permit is ours, the send logged), else the
--         ms until it may.
--   done  the answer came: the person is free again ms (the interval) from now. Returns 0.
--   hold  Meta refused the pair (131056): nobody sends to the person for ms from now (a longer
--         hold in force stays). Returns the ms held.
local mode, ms = ARGV[1], tonumber(ARGV[2])
if mode == 'take' then
  local cap, window = tonumber(ARGV[3]), tonumber(ARGV[4])
  local now = 0
  if cap > 0 then
    local t = redis.call('TIME')
    now = t[1] * 1000 + t[2] / 1000
    redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - window)
    if redis.call('ZCARD', KEYS[2]) >= cap then
      local oldest = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
      return math.max(1, math.ceil(tonumber(oldest[2]) + window - now))
    end
  end
  if ms > 0 and not redis.call('SET', KEYS[1], '1', 'NX', 'PX', ms) then
    return math.max(1, redis.call('PTTL', KEYS[1]))
  end
  if cap > 0 then
    redis.call('ZADD', KEYS[2], now, string.format('%.3f', now) .. ':' .. ARGV[5])
    redis.call('PEXPIRE', KEYS[2], math.ceil(window) * 2)
  end
  return 0
end
if mode == 'hold' then
  local left = redis.call('PTTL', KEYS[1])
  if left > ms then
    return left
  end
end
redis.call('SET', KEYS[1], '1', 'PX', ms)
return mode == 'hold' and ms or 0
