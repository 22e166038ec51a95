-- Shared by the scripts (prepended when they are loaded): what happens when a job ends, and
-- releasing a job's chunks from its backlog into its shard's work stream.

-- A job ended at now_ms: list it for the retention sweeper; queue its completion callback.
local function job_ended(hash, ended_set, callbacks, job_id, now_ms)
  redis.call('ZADD', ended_set, now_ms, job_id)
  local url = redis.call('HGET', hash, 'callback_url')
  if url and url ~= '' then
    redis.call('XADD', callbacks, '*', 'job', job_id)
  end
end

-- Move up to n chunks from the backlog to the work stream, counted in the job's `released`.
local function release_chunks(hash, backlog, work, n)
  local released = 0
  for _ = 1, n do
    local chunk = redis.call('LPOP', backlog)
    if not chunk then break end
    redis.call('XADD', work, '*', 'c', chunk)
    released = released + 1
  end
  if released > 0 then redis.call('HINCRBY', hash, 'released', released) end
  return released
end

