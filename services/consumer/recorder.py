"""Answers on their way to the ledger: one ``Recorder`` per job, batching as they arrive.

A chunk's finish records all its answers at the end, but a consumer killed before that would
leave every answered recipient of the chunk to be sent again. So each answer is also written
as it arrives, in batches: a job's answers are flushed as one script call (record_answers.lua)
when ``flush_at`` have gathered (at most a quarter of the senders) or a wait after the first,
whichever comes first, one flush at a time per job. While Redis is unreachable a flush is
retried with backoff, and the next batch keeps gathering.

The wait follows how fast the job's answers come: ``flush_s`` while they come fast, doubling
after each flush that carried fewer than a quarter of ``flush_at`` (up to ``MAX_WAIT_S``) and
halving after each that carried half or more. A job held to its page's rate (40/s: a permit
batch of 2 every 50 ms) so writes a few answers per call instead of one per call, while the
senders waiting on its batch stay about a quarter of ``flush_at`` (or rate x ``MAX_WAIT_S``).

A sender waits for its answer's batch to be written before it takes the next recipient, so
requests in flight plus answers not yet written never exceed the senders (``FANOUT_CONCURRENCY``):
that is all a kill -9 can make us send twice. A doubtful answer (the request may have reached
the provider, no verdict came back) is written before its resend goes out, so ``indoubt`` has
counted every resend that could duplicate, even if we die right after.

    record_sent / record_failed / record_doubt -> the Batch that will carry it
    Batch.written()                             -> waits until that batch is in Redis
"""

from __future__ import annotations

import asyncio
import logging

from redis.exceptions import RedisError

from services.consumer import ledger
from shared.keys import JobKeys
from shared.models import Failure, Outcome
from shared.scripts import Scripts

log = logging.getLogger("fanout.consumer")

# Measured with bench/delivery.py (no provider latency, 256 senders): 2 ms / 32 answers keeps
# the throughput of recording once per chunk (5 ms / 64 halved it: senders wait on their batch).
FLUSH_S = 0.002
FLUSH_AT = 32
# The longest a slow job's answer waits for company before it is written (senders wait on it).
# 0.25: at 40/s a flush then carries ~8 answers, not ~4 (0.1): one record call per 8 sends.
MAX_WAIT_S = 0.25


class Batch:
    """Answers written together, and the senders waiting until they are in Redis."""

    __slots__ = ("_loop", "_waiters", "doubtful", "failed", "is_written", "sent")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.sent: list[int] = []
        self.failed: list[Failure] = []
        self.doubtful: list[int] = []
        self.is_written = False
        self._loop = loop
        self._waiters: list[asyncio.Future[None]] = []

    def __len__(self) -> int:
        return len(self.sent) + len(self.failed) + len(self.doubtful)

    def outcome(self) -> Outcome:
        return Outcome(self.sent, self.failed, self.doubtful)

    async def written(self) -> None:
        # One future per waiter, so a cancelled waiter cancels only its own wait (what
        # asyncio.shield gave, without its extra future and loop hop per waiter).
        if self.is_written:
            return
        waiter = self._loop.create_future()
        self._waiters.append(waiter)
        await waiter

    def set_written(self) -> None:
        self.is_written = True
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()


class Recorder:
    def __init__(
        self, scripts: Scripts, k: JobKeys, flush_s: float = FLUSH_S, flush_at: int = FLUSH_AT
    ) -> None:
        self.scripts = scripts
        self.keys = k
        self.flush_s = flush_s
        self.flush_at = flush_at
        self.wait_s = flush_s  # the flush deadline now, after the first answer of a batch
        self._loop = asyncio.get_running_loop()
        self._open = Batch(self._loop)
        self._timer: asyncio.TimerHandle | None = None
        self._due = False
        self._flusher: asyncio.Task[None] | None = None
        self._orphans: set[asyncio.Task[None]] = set()  # given-back batches being written

    def idle(self) -> bool:
        return self._flusher is None and not self._open and not self._orphans

    def record_sent(self, pos: int) -> Batch:
        batch = self._open
        batch.sent.append(pos)
        self._added(batch)
        return batch

    def record_failed(self, failure: Failure) -> Batch:
        batch = self._open
        batch.failed.append(failure)
        self._added(batch)
        return batch

    def record_doubt(self, pos: int) -> Batch:
        batch = self._open
        batch.doubtful.append(pos)
        self._added(batch)
        return batch

    def _added(self, batch: Batch) -> None:
        if len(batch) >= self.flush_at:
            self._kick()
        elif self._timer is None:
            self._timer = self._loop.call_later(self.wait_s, self._kick)

    def take_sent(self) -> Batch | None:
        """The open batch, when it holds only sent answers, for a chunk's finish to write in the
        same script call (finish_chunk.lua records any of the job's answers, each counted once):
        a round trip less per chunk. The caller sets it written once the finish is in Redis, or
        gives it back. Failures and doubts always go through record_answers.lua (it alone
        watches the job's failure rate)."""
        batch = self._open
        if not batch or batch.failed or batch.doubtful:
            return None
        self._open = Batch(self._loop)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        return batch

    def give_back(self, batch: Batch) -> None:
        """A taken batch whose finish did not make it: written on its own."""
        task = self._loop.create_task(self._write(batch))
        self._orphans.add(task)
        task.add_done_callback(self._orphans.discard)

    def _kick(self) -> None:
        self._due = True
        if self._flusher is None:
            self._flusher = self._loop.create_task(self._flush())

    async def _flush(self) -> None:
        try:
            while self._due:
                self._due = False
                if self._timer is not None:
                    self._timer.cancel()
                    self._timer = None
                batch, self._open = self._open, Batch(self._loop)
                if batch:
                    self._adapt(len(batch))
                    await self._write(batch)
                if self._open and self._timer is None and not self._due:
                    self._timer = self._loop.call_later(self.wait_s, self._kick)
        finally:
            self._flusher = None

    def _adapt(self, size: int) -> None:
        """The next batches' wait, from how many answers this one gathered."""
        if size * 2 >= self.flush_at:
            self.wait_s = max(self.flush_s, self.wait_s / 2)
        elif size * 4 < self.flush_at:
            self.wait_s = min(MAX_WAIT_S, self.wait_s * 2)

    async def _write(self, batch: Batch) -> None:
        outcome = batch.outcome()
        try:
            await ledger.retrying(
                lambda: ledger.record(self.scripts, self.keys, outcome), "record answers"
            )
        except RedisError:
            # Not Redis being away but a refusal: the chunk's finish records sent and failed
            # answers again; leaving the senders stuck on this batch would help nobody.
            log.exception("answers not recorded early", extra={"job_id": self.keys.job_id})
        finally:
            batch.set_written()
