"""The release window follows the fleet's demand.

A job releases FANOUT_WINDOW chunks into its shard's work stream at create and resume, and
finish_chunk.lua releases one for each one finished: a floor, which is what keeps a big job
from filling the stream ahead of a small one. Alone it also caps a job at window x chunk size
requests in flight (800), whatever the fleet's senders. So when a consumer's read of a shard
comes back short (nothing else is waiting there) while a chunk's worth of its senders or more
would sit idle, it asks the jobs it is delivering on that shard for the chunks it can start at
once (shared/lua/top_up.lua, one call for all of them, shared round-robin). A job's window so
grows to what the fleet's idle senders can carry, and no further:

  * only a short read asks, so what is released never overtakes anything already waiting: a
    small job submitted behind a big one is read first, as before;
  * a consumer asks for no more than its free senders hold and reads it at once, so the
    stream holds no pile of one job's chunks;
  * paused, cancelled and failed jobs release nothing (the script checks the status), and what
    is out meets a pause at its next permit batch, as before;
  * a job held back by its page's rate limit (one of its chunks waits for permits) is not
    asked: more of its chunks would only wait too, and count against the held bound that keeps
    other pages' jobs flowing.
"""

from __future__ import annotations

from collections.abc import Iterable

from services.consumer.delivery import JobSpec
from shared import keys
from shared.scripts import Scripts

_BACKLOG_EMPTY = -1  # top_up.lua: the job has nothing left to release
_FORGET_AFTER = 1024  # drained jobs remembered, at most


class Demand:
    """One consumer's asks for more of the jobs it delivers."""

    def __init__(self, scripts: Scripts) -> None:
        self.scripts = scripts
        # Jobs whose backlog was found empty: asked no more (a backlog refills only when a
        # pause puts chunks back, and resume releases those itself).
        self._drained: set[str] = set()

    async def top_up(self, stream: str, wanted: int, held: Iterable[tuple[JobSpec, bool]]) -> int:
        """Ask the jobs of ``held`` (the shard's chunks this consumer holds, each with whether
        it is held back: waiting for its page's permits) for ``wanted`` more chunks, released
        into ``stream``; how many were."""
        asked: dict[str, keys.JobKeys] = {}
        held_back: set[str] = set()
        for spec, waiting in held:
            if waiting or spec.stopped or spec.job_id in self._drained:
                held_back.add(spec.job_id)
            else:
                asked[spec.job_id] = spec.keys
        jobs = [k for job_id, k in asked.items() if job_id not in held_back]
        if not jobs or wanted <= 0:
            return 0
        flat = [key for k in jobs for key in (k.hash, k.backlog)]
        reply = await self.scripts.top_up(keys=[stream, *flat], args=[wanted])
        released = 0
        for k, count in zip(jobs, map(int, reply), strict=True):
            if count == _BACKLOG_EMPTY:
                self._drained.add(k.job_id)
            released += max(0, count)
        if len(self._drained) > _FORGET_AFTER:
            self._drained.clear()  # forgetting costs one more ask per job, nothing else
        return released
