"""A page's state across the fleet, beside its rate limiter and in its slot: Meta's
restriction (10/1893063) and the circuit breaker a provider outage trips.

Jobs of one page live on different shards, so what concerns the page as a whole lives under
the page's own hash tag (``keys.page_state``, ``keys.page_jobs``, ``keys.rate``), and each
script touches that one slot. Pausing the page's jobs is ``control.pause_page``.
"""

from __future__ import annotations

from typing import Literal, cast

from redis.asyncio import Redis

from shared import keys
from shared.scripts import Scripts

Hold = Literal["provider_outage", "page_restricted"]


def _text(value: bytes | str | None) -> str:
    if isinstance(value, bytes):
        return value.decode()
    return value or ""


async def admit(scripts: Scripts, page_id: str, job_id: str, retention_s: int) -> str | None:
    """List a new job under its page; the restriction's reason instead when the page is
    restricted (then nothing is written)."""
    reply = await scripts.page_admit(
        keys=[keys.page_state(page_id), keys.page_jobs(page_id)],
        args=[job_id, retention_s * 1000],
    )
    return _text(reply) or None


async def lift_restriction(redis: Redis, page_id: str) -> str | None:
    """A user resumed a job of the page: the restriction is over. Returns the reason it had,
    or None when the page was not restricted."""
    key = keys.page_state(page_id)
    reason = cast(bytes | None, await redis.hget(key, "reason"))
    deleted = await redis.delete(key)
    return _text(reason) or "page restricted" if deleted else None


async def hold(redis: Redis, page_id: str) -> Hold | None:
    """Why the page's sends are held now, if they are: Meta restricted it, or the breaker holds
    it through a provider outage (probing until it recovers)."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hexists(keys.page_state(page_id), "restricted")
        pipe.hget(keys.rate(page_id), "breaker")
        restricted, breaker = await pipe.execute()
    if restricted:
        return "page_restricted"
    if breaker == b"open":
        return "provider_outage"
    return None
