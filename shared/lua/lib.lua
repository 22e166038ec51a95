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


-- Record answers in a job's ledger: outcome = msgpack [[sent pos...], [[pos, recipient, code,
-- subcode, message, attempts]...], [doubtful pos...]]. Counters move only when a bit flips, so
-- recording the same answer twice changes nothing; but every doubtful entry counts one send
-- that may have reached the person twice (one recipient resent twice counts 2), so a caller
-- passes each doubt once. Returns how many became sent and failed.
-- fallback_bits (may be nil): recipients sent the job's utility fallback, counted in
-- `fallback_sent` as their sent bit flips.
local function record_outcome(hash, sent_bits, failed_bits, errors, indoubt_bits, outcome, cap,
    fallback_bits)
  local sent, failed, fallbacks = 0, 0, 0
  for _, p in ipairs(outcome[1]) do
    if redis.call('GETBIT', failed_bits, p) == 0 and redis.call('SETBIT', sent_bits, p, 1) == 0 then
      sent = sent + 1
      if fallback_bits and redis.call('GETBIT', fallback_bits, p) == 1 then
        fallbacks = fallbacks + 1
      end
    end
  end
  if fallbacks > 0 then redis.call('HINCRBY', hash, 'fallback_sent', fallbacks) end
  for _, f in ipairs(outcome[2]) do
    local p = f[1]
    if redis.call('GETBIT', sent_bits, p) == 0 and redis.call('SETBIT', failed_bits, p, 1) == 0 then
      failed = failed + 1
      redis.call('HINCRBY', hash, 'code:' .. f[3], 1)
      redis.call('XADD', errors, 'MAXLEN', '~', cap, '*', 'recipient', f[2], 'code', f[3],
        'subcode', f[4], 'message', f[5], 'attempts', f[6])
    end
  end
  for _, p in ipairs(outcome[3]) do redis.call('SETBIT', indoubt_bits, p, 1) end
  if #outcome[3] > 0 then redis.call('HINCRBY', hash, 'indoubt', #outcome[3]) end
  if sent > 0 then redis.call('HINCRBY', hash, 'sent', sent) end
  if failed > 0 then redis.call('HINCRBY', hash, 'failed', failed) end
  return sent, failed
end
