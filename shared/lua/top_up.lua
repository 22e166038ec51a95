-- The release window follows the fleet's demand: a consumer whose senders would sit idle and
-- whose read found its shard's work stream empty asks the jobs it is working on for more
-- chunks (services/consumer/worker.py top_up). FANOUT_WINDOW stays each job's floor, released
-- at create/resume and kept by finish_chunk (one out, one in); this adds what the fleet can
-- take at once, so one job can have as many requests in flight as the fleet has senders.
-- What keeps the window's purpose:
--   * a consumer asks only when its read came back short, i.e. nothing else was waiting in the
--     stream, and for no more than its free senders hold: what it releases it reads at once,
--     so a small job submitted meanwhile is never queued behind a pile of a big one's chunks
--     (its chunks are ahead in the stream of anything released after them);
--   * only pending or running jobs release: a paused, cancelled or failed job gets nothing
--     (what is out already meets the status at its next permit batch, as before).
-- The wanted chunks are shared round-robin among the jobs, one chunk each in turn, so two big
-- jobs on a shard grow their windows alike.
-- KEYS: 1 shard work stream, then per job: job hash, backlog (all of the shard's slot)
-- ARGV: 1 chunks wanted in all
-- Returns per job (in KEYS order): chunks released; or -1 when its backlog is empty, -2 when it
-- is not pending or running (paused, ended, gone): nothing released.
local jobs = (#KEYS - 1) / 2
local released, open, answer = {}, {}, {}
for j = 1, jobs do
  local status = redis.call('HGET', KEYS[2 * j], 'status')
  released[j] = 0
  open[j] = status == 'pending' or status == 'running'
  answer[j] = open[j] and -1 or -2
end
local wanted = tonumber(ARGV[1])
local any = true
while wanted > 0 and any do
  any = false
  for j = 1, jobs do
    if wanted > 0 and open[j] then
      -- lib.lua's release_chunks, one at a time: the same backlog format and `released` count
      if release_chunks(KEYS[2 * j], KEYS[2 * j + 1], KEYS[1], 1) == 1 then
        released[j] = released[j] + 1
        wanted = wanted - 1
        any = true
      else
        open[j] = false
      end
    end
  end
end
for j = 1, jobs do
  if released[j] > 0 or open[j] then answer[j] = released[j] end
end
return answer
