"""Sending: a fixed pool of sender coroutines fed one recipient at a time from a queue.

A chunk (``ChunkWork``) puts its unfinished recipients on the queue, a permit batch at a
time, and waits for ``done``; each sender POSTs one, classifies the answer and records it on
the chunk and, through the job's Recorder, in Redis before it takes the next one. What happens
next is the verdict's:

  sent        recorded
  retry       back on the queue after full-jitter backoff and a fresh permit, until the
              recipient's retry budget is spent (FANOUT_RETRY_BUDGET_S of time its page was
              not held, or FANOUT_MAX_ATTEMPTS transient answers while the page was otherwise
              healthy: pagehealth.py); then failed with the last code
              (when the request may have reached the provider, the resend is counted in
              doubt first)
  throttled   the page cools down fleet-wide, and the recipient is retried the same way
              (throttles have a larger budget of their own: they are not the recipient's fault)
  fatal       the recipient fails and the job is stopped; queued recipients of a stopped job
              are dropped (they end skipped)
  failed      recorded with the provider's code and subcode
  restricted  Meta restricted the page: the recipient stays unsent, the page's jobs are paused
              fleet-wide and its chunks go back to their backlogs until a user resumes
Every answer also feeds the page's circuit breaker (pagehealth.py).
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Awaitable, Callable

from msgspec import Struct
from redis.exceptions import RedisError

from services.consumer import pairs
from services.consumer.limiter import Permits
from services.consumer.pagehealth import PageHealth, RetryBudget
from services.consumer.pairs import PairPermits
from services.consumer.reach import Reach
from services.consumer.recorder import Batch, Recorder
from shared import metrics
from shared.classify import Decision, backoff
from shared.keys import JobKeys
from shared.models import Chunk, Failure, Outcome
from shared.provider import Head, MessengerClient, SendResult
from shared.providers import Request

log = logging.getLogger("fanout.consumer")

_THROTTLE_BUDGET = 50  # attempts per recipient while the provider keeps saying "slow down"


class JobSpec:
    """What every message of one job shares: its sender's head, limiter and the provider's
    request builder and answer table (shared/providers). The per-recipient calls are the
    provider's own bound methods, so a channel adds no branch and no call here."""

    __slots__ = (
        *("body", "classify", "fallback_body", "has_fallback", "request", "tagged"),
        *("head", "job_id", "keys", "limiter", "message", "page_id", "stopped"),
        *("suppress", "window_require"),
        *("pairs", "reach"),
    )

    def __init__(
        self,
        keys: JobKeys,
        page_id: str,
        head: Head,
        limiter: Permits,
        message: Struct,
        request: Request,
        classify: Callable[[SendResult], Decision],
        *,
        window_require: bool = False,
        suppress: bool = False,
    ) -> None:
        self.keys = keys
        self.window_require = window_require  # screen.py: who is outside the 24-hour window
        self.suppress = suppress  # screen.py: skip the sender's suppressed people
        self.job_id = keys.job_id
        self.page_id = page_id  # the sender: a page or a WhatsApp number
        self.head = head  # the framed request head, sender token included: memory only
        self.limiter = limiter
        self.message = message  # as stored; personal ones still carry their placeholders
        self.stopped = False  # the job was stopped: send nothing more for it
        self.request = request
        self.body = request.body
        self.tagged = request.tagged
        self.fallback_body = request.fallback_body
        self.has_fallback = request.has_fallback
        self.classify = classify
        # WhatsApp's limits at dispatch (the consumer sets them; None costs nothing): the
        # per-person pair permit (pairs.py) and the portfolio's tier (reach.py).
        self.pairs: PairPermits | None = None
        self.reach: Reach | None = None


class ChunkWork:
    """One chunk in progress: what is left, what each recipient came to."""

    def __init__(self, entry_id: bytes, chunk: Chunk, spec: JobSpec, recorder: Recorder) -> None:
        self.entry_id = entry_id
        self.chunk = chunk
        self.spec = spec
        self.recorder = recorder  # the job's: answers reach Redis as they arrive
        self.sent: list[int] = []
        self.failed: list[Failure] = []
        self.unwritten: dict[int, Batch] = {}  # index -> the batch carrying its latest record
        self.attempts: dict[int, int] = {}
        self.unsubmitted = len(chunk.ids)
        self.fallback: frozenset[int] = frozenset()  # indexes sent the job's utility fallback
        self.requeue = False  # stopped early by a pause: the chunk goes back to the backlog
        self.remaining = 0  # submitted and not yet settled
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def outcome(self) -> Outcome:
        """Every answer so far, for the finish (recording one twice changes nothing). No
        doubts: each was written before its resend, and one never followed by a resend
        duplicated nothing; the next holder counts what is unfinished."""
        return Outcome(self.sent, self.failed, [])

    def record_sent(self, index: int) -> None:
        pos = self.chunk.start + index
        self.sent.append(pos)
        self.unwritten[index] = self.recorder.record_sent(pos)

    def fail(self, index: int, decision: Decision, attempts: int) -> None:
        failure = Failure(
            self.chunk.start + index,
            self.chunk.ids[index],
            decision.code,
            decision.subcode,
            decision.message[:300],
            attempts,
            decision.verdict == "failed",  # about the person or the message: the failure rate
        )
        self.failed.append(failure)
        self.unwritten[index] = self.recorder.record_failed(failure)

    def doubt(self, index: int) -> None:
        """The last request may have reached the person; the next one may be a duplicate."""
        self.unwritten[index] = self.recorder.record_doubt(self.chunk.start + index)

    async def written(self, index: int) -> None:
        """Until the recipient's latest record is in Redis."""
        batch = self.unwritten.get(index)
        if batch is not None:
            await batch.written()
            if self.unwritten.get(index) is batch:
                del self.unwritten[index]

    def settle(self) -> None:
        self.remaining -= 1
        if self.remaining == 0 and self.unsubmitted == 0 and not self.done.done():
            self.done.set_result(None)

    def all_submitted(self) -> None:
        self.unsubmitted = 0
        if self.remaining == 0 and not self.done.done():
            self.done.set_result(None)


Item = tuple[ChunkWork, int]


class Senders:
    def __init__(
        self,
        client: MessengerClient,
        concurrency: int,
        max_attempts: int,
        on_fatal: Callable[[JobSpec, Decision], None],
        retry_budget_s: float = 600.0,
        on_suppress: Callable[[JobSpec, str, Decision], Awaitable[None]] | None = None,
    ) -> None:
        self.client = client
        # An answer permanent for the person: they join the page's suppression list before the
        # sender moves on, so a job started after this one ended never asks Meta again.
        self.on_suppress = on_suppress
        self.max_attempts = max_attempts  # transient answers while the page is healthy
        self.retry_budget_s = retry_budget_s
        self.on_fatal = on_fatal  # also told of a restricted page (verdict "restricted")
        self._budgets: weakref.WeakKeyDictionary[ChunkWork, dict[int, RetryBudget]] = (
            weakref.WeakKeyDictionary()
        )
        self.queue: asyncio.Queue[Item] = asyncio.Queue()
        self._tasks = [asyncio.create_task(self._run()) for _ in range(concurrency)]
        self._retries: set[asyncio.Task[None]] = set()
        # In flight: counted in metrics.IN_FLIGHT, which a scrape between bursts cannot miss.
        self.in_flight = metrics.IN_FLIGHT

    def submit(self, work: ChunkWork, indexes: list[int], taken: int) -> None:
        work.unsubmitted -= taken
        work.remaining += len(indexes)
        for index in indexes:
            self.queue.put_nowait((work, index))

    async def close(self) -> None:
        for task in [*self._tasks, *self._retries]:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._retries, return_exceptions=True)

    async def _run(self) -> None:
        queue = self.queue
        while True:
            work, index = await queue.get()
            if work.done.done():  # the chunk was abandoned at shutdown
                continue
            if work.spec.stopped:
                work.settle()  # never sent: counted skipped when the job's chunks are all in
                continue
            # A resend goes out only once its doubt is in Redis, and a sender moves on only
            # once its answer is: what a kill -9 can duplicate stays within the senders.
            await work.written(index)
            await self._send_one(work, index)
            await work.written(index)

    async def _send_one(self, work: ChunkWork, index: int) -> None:
        spec = work.spec
        health = spec.limiter.health
        if health.restricted:
            self._hold_back(work)
            return
        if spec.limiter.cooling_s() > 0:
            # The page was throttled after this recipient got its permit (a chunk takes a
            # batch): it waits out the pause for a fresh permit instead of going out to be
            # refused. Not an attempt: nothing was sent.
            self._later(work, index, asyncio.sleep(0))
            return
        attempt = work.attempts.get(index, 0) + 1
        work.attempts[index] = attempt
        chunk = work.chunk
        body = self._body(work, index, attempt)
        if body is None:
            return
        if spec.pairs is not None and await self._pair_busy(work, index, spec.pairs):
            return
        body = spec.tagged(body, chunk.start + index)
        probe = health.take_probe()
        self.in_flight.enter()
        try:
            result = await self.client.send(spec.head, body)
        finally:
            self.in_flight.leave()
        metrics.SEND_DURATION.observe(result.seconds)
        decision = spec.classify(result)
        if spec.pairs is not None:
            # Free the person one pair interval from now, or, after Meta's pair limit (131056),
            # hold them fleet-wide for its back-off: they are retried as a transient answer,
            # but the sender is not cooled down and its breaker does not count it.
            await pairs.answered(spec.pairs, chunk.ids[index], decision, attempt)
        verdict = decision.verdict
        first = attempt == 1
        transient = verdict == "retry" and not decision.pace_person
        await self._weigh(health, probe, transient, decision, first, chunk.ids[index])
        if verdict == "sent":
            work.record_sent(index)  # counted in metrics per chunk
            work.settle()
            return
        if verdict == "throttled" and attempt < _THROTTLE_BUDGET:
            metrics.RATE_LIMITED.inc()
            self._later(work, index, self._cool_down(spec, decision))
            return
        if verdict == "retry" and not self._retries_spent(work, index, health):
            if result.maybe_delivered:
                # The request went out but no verdict came back: a resend may duplicate it.
                work.doubt(index)
            metrics.RETRIES.inc()
            self._later(work, index, asyncio.sleep(backoff(attempt)))
            return
        if verdict == "restricted":
            # Meta refused the page, not the person: they wait, unsent, with the rest of the
            # page's jobs, paused until a user resumes one (the worker pauses them).
            health.restrict()
            self.on_fatal(spec, decision)
            self._hold_back(work)
            return
        await self._fail(work, index, decision, attempt)

    def _body(self, work: ChunkWork, index: int, attempt: int) -> bytes | None:
        """The recipient's request body; None when the message, filled for them, breaks one of
        the provider's limits (then they failed)."""
        spec, chunk = work.spec, work.chunk
        if index in work.fallback:
            body: bytes | Decision = spec.fallback_body(chunk.ids[index])
        else:
            body = spec.body(chunk.ids[index], chunk.vars[index] if chunk.vars else None)
        if isinstance(body, Decision):
            work.fail(index, body, attempt)
            metrics.MESSAGES.labels("failed", body.code).inc()
            work.settle()
            return None
        return body

    async def _fail(self, work: ChunkWork, index: int, decision: Decision, attempt: int) -> None:
        """The recipient failed with the provider's answer; a permanent one for the person
        suppresses them, a fatal one stops the job."""
        spec = work.spec
        work.fail(index, decision, attempt)
        metrics.MESSAGES.labels("failed", decision.code).inc()
        if decision.suppress and self.on_suppress is not None:
            await self.on_suppress(spec, work.chunk.ids[index], decision)
        if decision.verdict == "fatal":
            self.on_fatal(spec, decision)
        work.settle()

    async def _pair_busy(self, work: ChunkWork, index: int, permits: PairPermits) -> bool:
        """Whether the send must wait (pairs.py): the person got a message from this sender
        within the pair interval (another job, a retry), or a strict sender's last second is
        full. Then they wait on the queue and the sender moves on. Not an attempt: nothing
        was sent."""
        wait_s = await pairs.wait_s(permits, work.chunk.ids[index])
        if wait_s <= 0:
            return False
        work.attempts[index] -= 1
        # Its rate permit went unused, and the send log rechecks the rate when it comes back.
        self._later(work, index, asyncio.sleep(wait_s), permit=False)
        return True

    @staticmethod
    def _hold_back(work: ChunkWork) -> None:
        """Unsent because the page is restricted: the chunk goes back with its unfinished
        recipients, to the backlog of its paused job."""
        work.requeue = True
        work.settle()

    @staticmethod
    async def _weigh(
        health: PageHealth,
        probe: bool,
        transient: bool,
        decision: Decision,
        first: bool,
        recipient: str,
    ) -> None:
        """Feed the page's breaker: a probe's answer closes it or keeps it open; any other
        answer joins the page's recent ones, which may trip it. Answers to requests sent before
        the page was held prove nothing either way: the probe decides."""
        if probe:
            await health.probe_answered(transient)
        elif not health.held:
            health.record(transient, first, recipient)
            if health.should_trip():
                await health.trip(decision.code)

    def _retries_spent(self, work: ChunkWork, index: int, health: PageHealth) -> bool:
        """The recipient's transient answers have taken its budget: in time (the page's held
        time not counted), or in strikes while its page was otherwise healthy."""
        now = asyncio.get_running_loop().time()
        held_s = health.held_s(now)
        budgets = self._budgets.get(work)
        if budgets is None:
            budgets = self._budgets[work] = {}
        budget = budgets.get(index)
        if budget is None:
            budget = budgets[index] = RetryBudget(now, held_s)
        healthy = health.healthy()
        return budget.spent(
            now, held_s, healthy, health.answered, self.max_attempts, self.retry_budget_s
        )

    async def _cool_down(self, spec: JobSpec, decision: Decision) -> None:
        pause_s = await spec.limiter.cool_down(decision.retry_after)
        if pause_s is None:
            return
        log.warning(
            "provider throttled the page; pausing it fleet-wide",
            extra={"job_id": spec.job_id, "code": decision.code, "pause_s": pause_s},
        )

    def _later(
        self, work: ChunkWork, index: int, wait: Awaitable[None], permit: bool = True
    ) -> None:
        """Re-queue after ``wait`` and a fresh permit (unless ``permit`` is False: the
        recipient's permit went unused); the sender's slot is free meanwhile."""

        async def again() -> None:
            try:
                await wait
            except (RedisError, OSError) as exc:
                log.warning("cool-down not recorded", extra={"error": str(exc)})
            while permit:
                try:
                    await work.spec.limiter.take(1)
                    break
                except (RedisError, OSError) as exc:
                    # Fail closed: no permit, no send. Redis will be back.
                    log.warning("no permit: Redis unavailable", extra={"error": str(exc)})
                    await asyncio.sleep(1)
            self.queue.put_nowait((work, index))

        task = asyncio.create_task(again())
        self._retries.add(task)
        task.add_done_callback(self._retries.discard)
