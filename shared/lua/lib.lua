-- Shared by the scripts (prepended when they are loaded): what happens when a job ends, and
-- releasing a job's chunks from its backlog into its shard's work stream.

-- Leases lapse for everyone while Redis is stalled (SIGSTOP, a long fork, a slow disk) or out of
-- reach for longer than one, so on its return a take-over call that was already waiting would
-- find live holders' entries idle past the lease and take them: every answer those holders had
-- not written yet would go out twice. So each lease renewal and take-over call on a stream notes
-- the time in the stream's lease clock; a gap longer than gap_ms (the lease, or more when the
-- fleet's calls are further apart than that) since the last note means nobody could renew,
-- and take-overs wait quiet_ms (half a lease: live holders renew every third of one).
-- Returns whether take-overs must wait now.
local function lease_clock(clock, gap_ms, quiet_ms)
  local t = redis.call('TIME')
  local now = t[1] * 1000 + math.floor(t[2] / 1000)
  local state = redis.call('HMGET', clock, 'last', 'quiet_until')
  local last = tonumber(state[1] or '0')
  local quiet_until = tonumber(state[2] or '0')
  if last > 0 and now - last > gap_ms then
    quiet_until = now + quiet_ms
  end
  redis.call('HSET', clock, 'last', now, 'quiet_until', quiet_until)
  redis.call('PEXPIRE', clock, 86400000)
  return now < quiet_until
end

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


-- The job's recent failure rate, as a sliding-window counter over FAILURE_WINDOW recipients
-- settled: the block filling (fr_n settled, fr_f counted failures) and the last full one
-- (fr_pn, fr_pf), weighted by how much of it still falls in the window. Four hash fields,
-- O(1) per batch. Counted failures are answers about the person or the message; transient
-- answers and throttles that ran out of retries are not (the page's breaker owns those).
local FAILURE_WINDOW = 500

local function failure_window_add(hash, settled, counted)
  local w = redis.call('HMGET', hash, 'fr_n', 'fr_f')
  local n = tonumber(w[1] or '0') + settled
  local f = tonumber(w[2] or '0') + counted
  if n >= FAILURE_WINDOW then
    redis.call('HSET', hash, 'fr_pn', n, 'fr_pf', f, 'fr_n', 0, 'fr_f', 0)
  else
    redis.call('HSET', hash, 'fr_n', n, 'fr_f', f)
  end
end

-- The share of counted failures over the last FAILURE_WINDOW settled, or nil before that many.
local function failure_rate(hash)
  local w = redis.call('HMGET', hash, 'fr_n', 'fr_f', 'fr_pn', 'fr_pf')
  local n, f = tonumber(w[1] or '0'), tonumber(w[2] or '0')
  local pn, pf = tonumber(w[3] or '0'), tonumber(w[4] or '0')
  if pn == 0 then return nil end
  local weight = math.max(0, (FAILURE_WINDOW - n) / pn)
  return (f + pf * weight) / (n + pn * weight)
end

-- The job's chart: sent, failed, delivered and read per second, a ring of 3,600 fields
-- "s:<second mod 3600>" = "<second>:<sent>:<failed>:<delivered>:<read>" (an older second in a
-- field is replaced; a field of three numbers is an older release's), and per minute over the
-- job's life, "m:<minute>:<s|f|d|r>". Bounded: 3,600 + 4 per minute. series may be nil (an
-- older caller): nothing then.
local function series_add(series, sent, failed, delivered, read)
  delivered, read = delivered or 0, read or 0
  if not series or sent + failed + delivered + read == 0 then return end
  local second = tonumber(redis.call('TIME')[1])
  local field = 's:' .. (second % 3600)
  local n = {sent, failed, delivered, read}
  local old = redis.call('HGET', series, field)
  if old then
    local parts = {}
    for x in string.gmatch(old, '%d+') do parts[#parts + 1] = tonumber(x) end
    if parts[1] == second then
      for i = 1, 4 do n[i] = n[i] + (parts[i + 1] or 0) end
    end
  end
  redis.call('HSET', series, field, second .. ':' .. table.concat(n, ':'))
  local minute = 'm:' .. math.floor(second / 60) .. ':'
  local add = {sent, failed, delivered, read}
  for i, name in ipairs({'s', 'f', 'd', 'r'}) do
    if add[i] > 0 then redis.call('HINCRBY', series, minute .. name, add[i]) end
  end
end

-- Record answers in a job's ledger: outcome = msgpack [[sent pos...], [[pos, recipient, code,
-- subcode, message, attempts, counts?]...], [doubtful pos...]] (counts: about the person or the
-- message, for the failure rate; absent from older consumers). Counters move only when a bit flips, so
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
  local counted = 0  -- failures about the person or the message (f[7]): the job's failure rate
  for _, f in ipairs(outcome[2]) do
    local p = f[1]
    if redis.call('GETBIT', sent_bits, p) == 0 and redis.call('SETBIT', failed_bits, p, 1) == 0 then
      failed = failed + 1
      if f[7] == true or f[7] == 1 then counted = counted + 1 end
      redis.call('HINCRBY', hash, 'code:' .. f[3], 1)
      redis.call('XADD', errors, 'MAXLEN', '~', cap, '*', 'recipient', f[2], 'code', f[3],
        'subcode', f[4], 'message', f[5], 'attempts', f[6])
    end
  end
  for _, p in ipairs(outcome[3]) do redis.call('SETBIT', indoubt_bits, p, 1) end
  if #outcome[3] > 0 then redis.call('HINCRBY', hash, 'indoubt', #outcome[3]) end
  if sent > 0 then redis.call('HINCRBY', hash, 'sent', sent) end
  if failed > 0 then redis.call('HINCRBY', hash, 'failed', failed) end
  if sent + failed > 0 then failure_window_add(hash, sent + failed, counted) end
  return sent, failed
end
