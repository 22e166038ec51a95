"""Sending: a fixed pool of sender coroutines fed one recipient at a time from a queue.

A chunk (``ChunkWork``) puts its unfinished recipients on the queue and waits for ``done``;
each sender POSTs one, classifies the answer, and records it on the chunk. Transient failures
go back on the queue after a full-jitter backoff (the slot is free meanwhile); the retry budget
bounds them, after which the recipient fails with the last code.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from shared import metrics
from shared.classify import Decision, backoff, classify
from shared.keys import JobKeys
from shared.models import Chunk, Failure, Outcome, json_encode
from shared.provider import Head, MessengerClient

log = logging.getLogger("fanout.consumer")


class JobSpec:
    """What every message of one job shares, the Send API body pre-split around the PSID."""

    __slots__ = ("_prefix", "_suffix", "head", "page_id")

    def __init__(self, page_id: str, head: Head, text: str, messaging_type: str, tag: str | None):
        self.page_id = page_id
        self.head = head  # the framed request head, page token included: memory only
        rest = {"message": {"text": text}, "messaging_type": messaging_type}
        if tag:
            rest["tag"] = tag
        tail = json_encode(rest)  # b'{"message":...}'
        self._prefix = b'{"recipient":{"id":'
        self._suffix = b"}," + tail[1:]

    def body(self, psid: str) -> bytes:
        return self._prefix + json_encode(psid) + self._suffix


class ChunkWork:
    """One chunk in progress: what is left, what each recipient came to."""

    def __init__(
        self, entry_id: bytes, chunk: Chunk, keys: JobKeys, spec: JobSpec | None, payload: bytes
    ) -> None:
        self.entry_id = entry_id
        self.chunk = chunk
        self.keys = keys
        self.spec = spec
        self.payload = payload
        self.sent: list[int] = []
        self.failed: list[Failure] = []
        self.doubtful: list[int] = []
        self.attempts: dict[int, int] = {}
        self.remaining = 0
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def outcome(self) -> Outcome:
        return Outcome(self.sent, self.failed, self.doubtful)

    def fail(self, index: int, decision: Decision, attempts: int) -> None:
        self.failed.append(
            Failure(
                self.chunk.start + index,
                self.chunk.ids[index],
                decision.code,
                decision.subcode,
                decision.message[:300],
                attempts,
            )
        )

    def settle(self) -> None:
        self.remaining -= 1
        if self.remaining == 0 and not self.done.done():
            self.done.set_result(None)


Item = tuple[ChunkWork, int]


class Senders:
    def __init__(self, client: MessengerClient, concurrency: int, max_attempts: int) -> None:
        self.client = client
        self.max_attempts = max_attempts
        self.queue: asyncio.Queue[Item] = asyncio.Queue()
        self._tasks = [asyncio.create_task(self._run()) for _ in range(concurrency)]
        self._later: Callable[[float, Item], None] = self._put_later

    def submit(self, work: ChunkWork, indexes: list[int]) -> None:
        work.remaining = len(indexes)
        for index in indexes:
            self.queue.put_nowait((work, index))

    def _put_later(self, delay: float, item: Item) -> None:
        asyncio.get_running_loop().call_later(delay, self.queue.put_nowait, item)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _run(self) -> None:
        queue = self.queue
        while True:
            work, index = await queue.get()
            if work.done.done():  # the chunk was abandoned at shutdown
                continue
            await self._send_one(work, index)

    async def _send_one(self, work: ChunkWork, index: int) -> None:
        spec = work.spec
        assert spec is not None
        attempt = work.attempts.get(index, 0) + 1
        work.attempts[index] = attempt
        metrics.IN_FLIGHT.inc()
        try:
            result = await self.client.send(spec.head, spec.body(work.chunk.ids[index]))
        finally:
            metrics.IN_FLIGHT.dec()
        metrics.SEND_DURATION.observe(result.seconds)
        decision = classify(result)
        verdict = decision.verdict
        if verdict == "sent":
            work.sent.append(work.chunk.start + index)
            metrics.MESSAGES.labels("sent", "").inc()
            work.settle()
            return
        if verdict in ("retry", "throttled") and attempt < self.max_attempts:
            if verdict == "throttled":
                metrics.RATE_LIMITED.inc()
            if result.maybe_delivered:
                # The request went out but no answer came: a resend may duplicate it.
                work.doubtful.append(work.chunk.start + index)
            metrics.RETRIES.inc()
            self._later(backoff(attempt, retry_after=decision.retry_after), (work, index))
            return
        work.fail(index, decision, attempt)
        metrics.MESSAGES.labels("failed", decision.code).inc()
        work.settle()
