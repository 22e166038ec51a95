"""The consumer's side of the per-job ledger: one script call before a permit batch of a chunk,
answers recorded in batches as they arrive (recorder.py), one call after the chunk.

Each call is safe to repeat, so ``retrying`` repeats it, with backoff, for as long as Redis is
unreachable: a chunk keeps its outcomes through a Redis restart instead of being dropped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar, cast

import msgspec
from redis import exceptions as rx
from redis.asyncio import Redis

from shared import keys, messages
from shared.classify import backoff
from shared.models import Message, Outcome, msgpack_encode
from shared.providers import JobFields, provider_for
from shared.scripts import Scripts

log = logging.getLogger("fanout.consumer")
T = TypeVar("T")

# Redis is away (restarting, failing over, loading its AOF) rather than refusing the call.
UNREACHABLE = (
    *(rx.ConnectionError, rx.TimeoutError, rx.ClusterDownError, rx.TryAgainError),
    *(rx.ReadOnlyError, OSError),
)
_RETRY_BASE_S = 0.05
_RETRY_CAP_S = 1.0  # so work resumes within about a second of Redis coming back

ERRORS_CAP = 10_000  # failure records kept per job (approximate: XADD MAXLEN ~)

FRESH, FINISHED, IN_DOUBT = "0", "1", "2"


class Begun(msgspec.Struct, frozen=True):
    status: str  # the job's status, or "missing" when the job no longer exists
    states: str  # per recipient: FRESH, FINISHED or IN_DOUBT (empty unless pending/running)


class Finished(msgspec.Struct, frozen=True):
    sent: int
    failed: int
    acked: bool
    released: bool
    status: str


def _text(value: bytes | None) -> str:
    return value.decode() if value else ""


async def fields(redis: Redis, k: keys.JobKeys) -> JobFields | None:
    """What every message of the job shares; None when the job no longer exists."""
    names = ["page_id", "message", "text", "messaging_type", "tag", "personal"]
    names += ["window_rule", "suppress", "fallback", "channel"]
    values = await redis.hmget(k.hash, names)
    page_id, message, text, messaging_type, tag, personal, *listening = cast(
        list[bytes | None], values
    )
    if page_id is None:
        return None
    window_rule, suppress, fallback, channel = listening
    # A job written by a producer of the text-only release has no `message` field.
    provider = provider_for(_text(channel))  # UnknownChannel: a newer producer's job
    decoded = provider.decode_message(message) if message else Message(text=_text(text))
    return JobFields(
        _text(page_id),
        decoded,
        _text(messaging_type),
        _text(tag) or None,
        bool(personal),
        window_rule == b"require",
        suppress != b"0",  # jobs from before suppressions check them too
        messages.decode(fallback) if fallback else None,
        provider.channel,
    )


async def begin(scripts: Scripts, k: keys.JobKeys, start: int, count: int) -> Begun:
    reply = await scripts.begin_chunk(
        keys=[k.hash, k.attempted, k.sent, k.failed, k.indoubt, k.stats, k.skipped],
        args=[start, count],
    )
    return Begun(_text(reply[0]), _text(reply[1]))


async def finish(
    scripts: Scripts,
    k: keys.JobKeys,
    entry_id: bytes,
    outcome: Outcome,
    dead_reason: str = "",
    payload: bytes = b"",
    requeue: bool = False,
    client: Redis | None = None,
) -> Finished:
    """Record a chunk's outcome and settle its entry. ``requeue``: the consumer stopped early
    because the job was paused, and ``payload`` goes back for when it resumes."""
    reply = await scripts.finish_chunk(
        keys=[
            *(k.hash, k.sent, k.failed, k.errors, k.work, k.backlog, k.dead, k.indoubt),
            *(k.stats, k.ended, k.callbacks, k.fallback, k.series),
        ],
        args=[
            *(keys.GROUP, entry_id, msgpack_encode(outcome), dead_reason, payload, ERRORS_CAP),
            k.job_id,
            "1" if requeue else "0",
        ],
        client=client,
    )
    return Finished(int(reply[0]), int(reply[1]), reply[2] == 1, reply[3] == 1, _text(reply[4]))


async def record(scripts: Scripts, k: keys.JobKeys, outcome: Outcome) -> tuple[int, int]:
    """Record answers as they arrive; how many became sent and failed. The script pauses the
    job when its recent failure rate crosses max_failure_rate (logged here)."""
    reply = await scripts.record_answers(
        keys=[k.hash, k.sent, k.failed, k.errors, k.indoubt, k.fallback, k.stats, k.series],
        args=[msgpack_encode(outcome), ERRORS_CAP],
    )
    if len(reply) > 2 and int(reply[2]):
        log.warning("job auto-paused on its failure rate", extra={"job_id": k.job_id})
    return int(reply[0]), int(reply[1])


class Skip(msgspec.Struct, array_like=True):
    """A recipient skipped at dispatch, with why (as skip_recipients.lua reads it)."""

    pos: int
    recipient: str
    code: str  # window_closed | suppressed
    message: str


async def skip(
    scripts: Scripts, k: keys.JobKeys, skipped: list[Skip], fallback: list[int]
) -> dict[str, int]:
    """Record recipients skipped at dispatch and those routed to the fallback, before any POST;
    how many became skipped, by code (a repeat counts nothing)."""
    reply = await scripts.skip_recipients(
        keys=[k.hash, k.sent, k.failed, k.skipped, k.skips, k.fallback],
        args=[msgpack_encode(skipped), msgpack_encode(fallback), ERRORS_CAP],
    )
    flat = cast(list[bytes | int], reply)
    return {_text(cast(bytes, flat[i])): int(flat[i + 1]) for i in range(0, len(flat), 2)}


async def retrying(call: Callable[[], Awaitable[T]], what: str) -> T:
    """``call()`` until Redis answers it, with capped full-jitter backoff while it is
    unreachable; any other error is raised. Only for calls that are safe to repeat."""
    attempt = 0
    while True:
        try:
            result = await call()
        except UNREACHABLE as exc:
            attempt += 1
            if attempt == 1:
                log.warning("Redis unreachable; retrying", extra={"call": what, "error": str(exc)})
            await asyncio.sleep(backoff(attempt, base=_RETRY_BASE_S, cap=_RETRY_CAP_S))
            continue
        if attempt:
            log.info("Redis answered again", extra={"call": what, "attempts": attempt + 1})
        return result
