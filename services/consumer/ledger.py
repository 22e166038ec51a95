"""The consumer's side of the per-job ledger: one script call before a chunk, one after."""

from __future__ import annotations

import msgspec
from redis.asyncio import Redis

from shared import keys
from shared.models import Outcome, msgpack_encode
from shared.scripts import Scripts

ERRORS_CAP = 10_000  # failure records kept per job (approximate: XADD MAXLEN ~)

FRESH, FINISHED, IN_DOUBT = "0", "1", "2"


class JobFields(msgspec.Struct, frozen=True):
    page_id: str
    text: str
    messaging_type: str
    tag: str | None


class Begun(msgspec.Struct, frozen=True):
    status: str  # the job's status, or "missing" when the job no longer exists
    states: str  # per recipient: FRESH, FINISHED or IN_DOUBT (empty unless pending/running)
    fields: JobFields | None


class Finished(msgspec.Struct, frozen=True):
    sent: int
    failed: int
    acked: bool
    released: bool
    status: str


def _text(value: bytes | None) -> str:
    return value.decode() if value else ""


async def begin(
    scripts: Scripts, k: keys.JobKeys, start: int, count: int, want_fields: bool
) -> Begun:
    reply = await scripts.begin_chunk(
        keys=[k.hash, k.attempted, k.sent, k.failed, k.indoubt],
        args=[start, count, "1" if want_fields else "0"],
    )
    fields = None
    if len(reply) > 2:
        page_id, text, messaging_type, tag = (_text(v) for v in reply[2])
        fields = JobFields(page_id, text, messaging_type, tag or None)
    return Begun(_text(reply[0]), _text(reply[1]), fields)


async def finish(
    scripts: Scripts,
    k: keys.JobKeys,
    entry_id: bytes,
    outcome: Outcome,
    dead_reason: str = "",
    payload: bytes = b"",
    client: Redis | None = None,
) -> Finished:
    reply = await scripts.finish_chunk(
        keys=[k.hash, k.sent, k.failed, k.errors, k.work, k.backlog, k.dead, k.indoubt],
        args=[keys.GROUP, entry_id, msgpack_encode(outcome), dead_reason, payload, ERRORS_CAP],
        client=client,
    )
    return Finished(int(reply[0]), int(reply[1]), reply[2] == 1, reply[3] == 1, _text(reply[4]))
