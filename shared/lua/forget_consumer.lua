-- Forget a consumer of the group that is long gone, but only if it holds nothing: on Redis 7,
-- XGROUP DELCONSUMER drops the consumer's pending entries for good. Checking and deleting in
-- one script closes the race with a read in between.
-- KEYS: 1 shard work stream
-- ARGV: 1 group, 2 consumer
-- Returns 1 if deleted, 0 if it still holds entries.
local held = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if #held > 0 then return 0 end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
return 1
