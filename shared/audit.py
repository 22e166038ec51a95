"""The audit trail: who did what, as JSON log lines on the ``fanout.audit`` logger, each with
``"audit": true`` so a log pipeline can route them apart from the chatter.

- ``action``: a state change a person asked for (submit, pause, resume, cancel, suppress):
  who (the tenant), what, which job or page, and the result;
- ``refused``: every request answered 4xx: status, error code, route template, method, the
  tenant when it had authenticated; never a token, never a raw path (ids stay out);
- ``job_ended``: a job's end, whoever ended it, with its final counts and durations, read from
  the job hash so every way a job ends writes the same line, exactly once fleet-wide.
"""

from __future__ import annotations

import logging
from typing import cast

from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared import keys

log = logging.getLogger("fanout.audit")

_END_FIELDS = (
    *("status", "tenant", "page_id", "total", "sent", "failed", "skipped", "indoubt"),
    *("created_at", "started_at", "finished_at", "reason"),
)


def action(what: str, tenant: str, result: str, **details: object) -> None:
    log.info(what, extra={"audit": True, "tenant": tenant, "result": result, **details})


def refused(
    status: int, code: str, route: str, method: str, tenant: str | None, field: str | None
) -> None:
    extra: dict[str, object] = {"audit": True, "status": status, "code": code}
    extra |= {"route": route, "method": method, "tenant": tenant, "field": field}
    log.info("request refused", extra=extra)


def _seconds(later: bytes | None, earlier: bytes | None) -> float | None:
    if not later or not earlier:
        return None
    return round((int(later) - int(earlier)) / 1000, 3)


async def job_ended(redis: Redis, job_id: str) -> None:
    """One line for a job that has ended, written by whichever caller sees its end first: any
    process that may have ended a job calls this (the chunk finish that completed it, a stop, a
    cancel), and the job hash's ``end_logged`` field (HSETNX) elects one. A stopped job with
    chunks still in flight is not over until the last one is in (``finished_at``, final
    skipped count): until then this writes nothing, and that last chunk's finish calls again.
    Best effort: a log line is never worth failing the work that ended the job, so a Redis
    error here is logged and dropped."""
    job_hash = keys.JobKeys.of(job_id).hash
    try:
        raw = await redis.hmget(job_hash, list(_END_FIELDS))
        h = dict(zip(_END_FIELDS, cast(list[bytes | None], raw), strict=True))
        if h["status"] is None or h["finished_at"] is None:
            return  # swept already, or not over yet
        if not await redis.hsetnx(job_hash, "end_logged", "1"):
            return  # another process has written the line
    except (RedisError, OSError) as exc:
        log.warning("job end not logged", extra={"job_id": job_id, "error": str(exc)})
        return
    counts = {name: int(h[name] or 0) for name in ("total", "sent", "failed", "skipped")}
    counts["indoubt"] = int(h["indoubt"] or 0)
    log.info(
        "job ended",
        extra={
            "audit": True,
            "job_id": job_id,
            "status": h["status"].decode(),
            "tenant": (h["tenant"] or b"").decode(),
            "page_id": (h["page_id"] or b"").decode(),
            **counts,
            "duration_s": _seconds(h["finished_at"], h["created_at"]),
            "sending_s": _seconds(h["finished_at"], h["started_at"]),
            "reason": h["reason"].decode() if h["reason"] else None,
        },
    )
