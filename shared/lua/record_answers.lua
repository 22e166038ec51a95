-- Answers as they arrive, in batches (one call per batch of a job's answers, not per chunk), so
-- a consumer killed mid-chunk leaves at most its unrecorded answers to be resent, never the
-- whole chunk. Idempotent for sent and failed (bits); see record_outcome for doubts. The chunk's
-- finish records its answers again (a no-op then) and alone acks and completes.
-- KEYS: 1 job hash, 2 sent, 3 failed, 4 errors, 5 indoubt, 6 fallback (absent from older callers)
-- ARGV: 1 outcome (msgpack, as in record_outcome), 2 errors stream cap
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {0, 0}  -- the job expired or was deleted: nothing to count
end
local sent, failed = record_outcome(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5],
  cmsgpack.unpack(ARGV[1]), ARGV[2], KEYS[6])
return {sent, failed}
