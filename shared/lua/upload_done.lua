-- Store an uploaded attachment's id in the job hash and free the lease. The first id stored
-- wins (an upload by a holder whose lease had lapsed comes second): everyone sends by it.
-- KEYS: 1 job hash, 2 the job's upload lease
-- ARGV: 1 the uploader's owner token, 2 attachment id
-- Returns the job's attachment id, or false when the job is gone.
if redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('DEL', KEYS[2])
end
if redis.call('EXISTS', KEYS[1]) == 0 then
  return false
end
redis.call('HSETNX', KEYS[1], 'attachment_id', ARGV[2])
return redis.call('HGET', KEYS[1], 'attachment_id')
