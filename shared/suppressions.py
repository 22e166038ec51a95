"""A page's suppression list: people not to send to, with the code and time that put them there.

Filled automatically by answers permanent for the person (a Decision with ``suppress``: the
``SUPPRESS`` pairs of shared/providers/messenger.py, blocked the page, no such user, opted out;
WhatsApp's 131026 and 131050) and by the API; every job skips
them at dispatch unless it sets ``suppress: false``.

Storage: ``BUCKETS`` small hashes PSID -> "time_ms code" per page, in the page's hash-tag slot,
created as people are suppressed. Up to about 100,000 people per page each bucket stays under
``hash-max-listpack-entries`` (128), a listpack, where a suppressed person costs about 35 bytes
(a hash table entry and a sorted index would cost 200: bench/window_memory.py). Dispatch reads
them with the window in one script call per chunk (services/consumer/screen.py). The API lists
a page's suppressions bucket by bucket, PSIDs in order within each, from an opaque cursor
``<bucket>:<psid>``.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any, cast

import msgspec
from redis.asyncio import Redis

from shared import keys

BUCKETS = 1024
_SCAN_BATCH = 64  # buckets read per round trip while listing


class Suppression(msgspec.Struct, kw_only=True):
    psid: str
    code: str  # the provider's code/subcode, or the reason the API was given
    suppressed_at_ms: int


def bucket_of(psid: str) -> int:
    return zlib.crc32(psid.encode()) % BUCKETS


def key_of(page_id: str, psid: str) -> str:
    """The bucket that holds the PSID's suppression, if any."""
    return keys.suppressions(page_id, bucket_of(psid))


def unpack(psid: str, raw: bytes) -> Suppression:
    at_ms, _, code = raw.decode().partition(" ")
    return Suppression(psid=psid, code=code, suppressed_at_ms=int(at_ms))


async def add(redis: Redis, page_id: str, psids: Sequence[str], code: str, at_ms: int) -> int:
    """Suppress people (again: the newest code and time win); how many were new."""
    if not psids:
        return 0
    packed = f"{at_ms} {code}"
    by_bucket: dict[int, list[str]] = {}
    for psid in dict.fromkeys(psids):
        by_bucket.setdefault(bucket_of(psid), []).extend((psid, packed))
    async with redis.pipeline(transaction=False) as pipe:
        for bucket, items in by_bucket.items():
            pipe.hset(keys.suppressions(page_id, bucket), items=items)
        added: list[int] = await pipe.execute()
    return sum(added)


async def remove(redis: Redis, page_id: str, psid: str) -> bool:
    return bool(await redis.hdel(key_of(page_id, psid), psid))


async def get(redis: Redis, page_id: str, psid: str) -> Suppression | None:
    raw = cast(bytes | None, await redis.hget(key_of(page_id, psid), psid))
    return None if raw is None else unpack(psid, raw)


def parse_cursor(cursor: str) -> tuple[int, str] | None:
    """A ``next`` value from an earlier page, or None when it is not one."""
    bucket, sep, psid = cursor.partition(":")
    if not sep or not bucket.isdigit() or int(bucket) >= BUCKETS or not psid.isdigit():
        return None
    return int(bucket), psid


async def page(
    redis: Redis, page_id: str, after: tuple[int, str] | None, limit: int
) -> tuple[list[Suppression], str | None]:
    """Up to ``limit`` suppressions after the cursor; the next cursor, None at the end."""
    start, after_psid = after if after is not None else (0, "")
    items: list[tuple[int, Suppression]] = []
    for first in range(start, BUCKETS, _SCAN_BATCH):
        buckets = range(first, min(first + _SCAN_BATCH, BUCKETS))
        async with redis.pipeline(transaction=False) as pipe:
            for bucket in buckets:
                pipe.hgetall(keys.suppressions(page_id, bucket))
            replies: list[dict[Any, Any]] = await pipe.execute()
        for bucket, found in zip(buckets, replies, strict=True):
            for psid in sorted(found, key=lambda raw: (len(raw), raw)):
                text = psid.decode()
                if (
                    bucket == start
                    and after is not None
                    and (len(text), text)
                    <= (
                        len(after_psid),
                        after_psid,
                    )
                ):
                    continue
                items.append((bucket, unpack(text, found[psid])))
        if len(items) > limit:
            break
    page_items = items[:limit]
    more = len(items) > limit
    cursor = f"{page_items[-1][0]}:{page_items[-1][1].psid}" if more else None
    return [item for _, item in page_items], cursor
