-- Acknowledge and delete a finished stream entry in one step (XACK alone frees nothing).
-- KEYS: 1 stream
-- ARGV: 1 group, 2 entry id
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
return redis.call('XDEL', KEYS[1], ARGV[2])
