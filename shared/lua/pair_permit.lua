-- WhatsApp's pair limit, fleet-wide: one message per interval from one number to one person
-- (Meta: "1 message every 6 seconds to the same WhatsApp user"; above it, error 131056).
-- The permit is held from before the POST until the pair interval after its answer: Meta
-- counts from when the message reached it, which is before the answer came back, so timing the
-- interval from the answer keeps two sends to a person at least the interval apart at Meta
-- whatever the requests' latencies.
-- KEYS: 1 fanout:wa:{<number>}:pair:<to>
-- ARGV: 1 mode, 2 ms
--   take  ms = how long the permit may stay in flight (the interval plus the request timeout,
--         so a consumer that died mid-request frees it by itself): SET NX PX. Returns 0 when
--         the permit is ours (send now), else the ms until it may be free.
--   done  the answer came: the person is free again ms (the interval) from now. Returns 0.
--   hold  Meta refused the pair (131056): nobody sends to the person for ms from now (a longer
--         hold in force stays). Returns the ms held.
local mode, ms = ARGV[1], tonumber(ARGV[2])
if mode == 'take' then
  if redis.call('SET', KEYS[1], '1', 'NX', 'PX', ms) then
    return 0
  end
  return math.max(1, redis.call('PTTL', KEYS[1]))
end
if mode == 'hold' then
  local left = redis.call('PTTL', KEYS[1])
  if left > ms then
    return left
  end
end
redis.call('SET', KEYS[1], '1', 'PX', ms)
return mode == 'hold' and ms or 0
