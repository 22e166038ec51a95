-- Who uploads a job's attachment: the first consumer to ask, once per job. The lease expires
-- by itself, so a holder that died mid-upload hands over to the next consumer that asks.
-- KEYS: 1 job hash, 2 the job's upload lease (both in the job's slot)
-- ARGV: 1 the asker's owner token, 2 lease ms
-- Returns {'id', attachment id}  uploaded already: send by it
--         {'ended', status}      the job ended ('missing' when gone): send nothing
--         {'lease', ''}          the asker holds the lease (taken or renewed): upload
--         {'wait', ms}           another holds it for ms more: ask again later
local h = redis.call('HMGET', KEYS[1], 'attachment_id', 'status')
if h[1] then
  return {'id', h[1]}
end
local status = h[2]
if not status then
  return {'ended', 'missing'}
end
if status ~= 'pending' and status ~= 'running' and status ~= 'paused'
    and status ~= 'scheduled' then
  return {'ended', status}
end
local holder = redis.call('GET', KEYS[2])
if not holder or holder == ARGV[1] then
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
  return {'lease', ''}
end
return {'wait', tostring(redis.call('PTTL', KEYS[2]))}
