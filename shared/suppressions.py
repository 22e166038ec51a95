"""A page's suppression list: people not to send to, with the code and time that put them there.

Filled automatically by answers permanent for the person (the ``SUPPRESS`` pairs of
shared/classify.py: blocked the page, no such user, opted out) and by the API; every job skips
them at dispatch unless it sets ``suppress: false``. Both keys live in the page's hash-tag slot:
a hash PSID -> "code time_ms" for the dispatch check (one HMGET per chunk), and a zset of equal
scores over the same PSIDs so the API lists them in order from a cursor.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import msgspec
from redis.asyncio import Redis

from shared import keys


class Suppression(msgspec.Struct, kw_only=True):
    psid: str
    code: str  # the provider's code/subcode, or the reason the API was given
    suppressed_at_ms: int


def _pack(code: str, at_ms: int) -> str:
    return f"{at_ms} {code}"


def unpack(psid: str, raw: bytes) -> Suppression:
    at_ms, _, code = raw.decode().partition(" ")
    return Suppression(psid=psid, code=code, suppressed_at_ms=int(at_ms))


async def add(redis: Redis, page_id: str, psids: Sequence[str], code: str, at_ms: int) -> int:
    """Suppress people (again: the newest code and time win); how many were new."""
    if not psids:
        return 0
    packed = _pack(code, at_ms)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hset(keys.suppressions(page_id), mapping=dict.fromkeys(psids, packed))
        pipe.zadd(keys.suppression_index(page_id), dict.fromkeys(psids, 0))
        new, _ = await pipe.execute()
    return int(new)


async def remove(redis: Redis, page_id: str, psid: str) -> bool:
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hdel(keys.suppressions(page_id), psid)
        pipe.zrem(keys.suppression_index(page_id), psid)
        removed, _ = await pipe.execute()
    return bool(removed)


async def get(redis: Redis, page_id: str, psid: str) -> Suppression | None:
    raw = cast(bytes | None, await redis.hget(keys.suppressions(page_id), psid))
    return None if raw is None else unpack(psid, raw)


async def page(
    redis: Redis, page_id: str, after: str | None, limit: int
) -> tuple[list[Suppression], str | None]:
    """Suppressions in PSID order after the cursor; the next cursor, None at the end."""
    start = f"({after}" if after else "-"
    members = cast(
        list[bytes],
        await redis.zrangebylex(keys.suppression_index(page_id), start, "+", 0, limit),
    )
    psids = [m.decode() for m in members]
    if not psids:
        return [], None
    raw = cast(list[bytes | None], await redis.hmget(keys.suppressions(page_id), psids))
    items = [unpack(p, r) for p, r in zip(psids, raw, strict=True) if r is not None]
    return items, psids[-1] if len(psids) == limit else None
