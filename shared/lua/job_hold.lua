-- Why a running job's sends wait and until when (the job view's page_hold and hold_until), set
-- by a consumer holding one of its chunks back; the view ignores a hold whose time has passed.
-- Nothing is written once the job is gone (retention), so no partial hash appears.
-- KEYS: 1 the job hash
-- ARGV: 1 the reason (e.g. tier_reached), 2 until when (epoch ms)
-- Returns 1 when written.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
redis.call('HSET', KEYS[1], 'hold', ARGV[1], 'hold_until', ARGV[2])
return 1
