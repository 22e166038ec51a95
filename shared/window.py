"""The 24-hour window: each person's last interaction with a page, as Meta's webhooks tell it.

Storage (budget: 64 bytes of Redis per tracked (page, PSID), Redis 7.0, so no per-field
expiry): a page's people are spread over small hashes PSID -> unix seconds, in the page's
hash-tag slot, each kept under Redis's ``hash-max-listpack-entries`` (128) so it is a listpack:
a numeric PSID and its time cost about 16 bytes there, against ~80 in a hash table or a key of
their own. How many buckets depends on the page: ``TIERS`` of 64, 512, 4,096 and 32,768
buckets, a page moving up a tier once it has heard from about 64 people per bucket, so a page
of a thousand people keeps a few dozen keys and one of a million (up to about three million)
32,768 listpacks. Entries left in a smaller tier expire there; readers ask every tier (one
pipelined read per chunk) and take the newest time. Each bucket prunes its entries older than
``KEEP_S`` (a little over 7 days, for the 7-day tags) once a day, and expires as a whole when no
one in it was heard from for ``KEEP_S``. ``bench/window_memory.py`` prints the bytes per person.

The page's ``heard`` hash keeps when its webhooks started flowing: a job's ``window`` default is
``require`` only on a page heard from for 24 hours (a page not wired to webhooks must not
skip every recipient).
"""

from __future__ import annotations

import hashlib
import time
import zlib
from collections.abc import Sequence
from importlib import resources
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import NoScriptError

from shared import keys

# Buckets per tier, and how many people a page hears from before it moves to the next one.
TIERS = (1 << 6, 1 << 9, 1 << 12, 1 << 15)
_PEOPLE_PER_BUCKET = 64
_LIMITS = [size * _PEOPLE_PER_BUCKET for size in TIERS[:-1]]
_OFFSETS = [sum(TIERS[:i]) for i in range(len(TIERS))]
WINDOW_S = 24 * 3600
# Seven days for the CUSTOMER_FEEDBACK and HUMAN_AGENT tags, plus a day of slack.
KEEP_S = 8 * 24 * 3600
PRUNE_EVERY_S = 24 * 3600

_TOUCH = (resources.files("shared") / "lua" / "window_touch.lua").read_text("utf-8")
_TOUCH_SHA = hashlib.sha1(_TOUCH.encode()).hexdigest()
_INSIDE = (resources.files("shared") / "lua" / "window_inside.lua").read_text("utf-8")
_INSIDE_SHA = hashlib.sha1(_INSIDE.encode()).hexdigest()


def bucket_keys(page_id: str, psid: str) -> list[str]:
    """The PSID's bucket in each tier, smallest first."""
    h = zlib.crc32(psid.encode())
    return [
        keys.window_bucket(page_id, offset + h % size)
        for offset, size in zip(_OFFSETS, TIERS, strict=True)
    ]


async def touch(redis: Redis, page_id: str, psid: str, ts_ms: int) -> None:
    """Record that the person interacted with the page at ts_ms (an event's ``timestamp``):
    idempotent, the newest timestamp wins, whatever order events arrive in."""
    keys_ = [*bucket_keys(page_id, psid), keys.window_heard(page_id)]
    args: list[str | int] = [psid, ts_ms // 1000, KEEP_S, PRUNE_EVERY_S, *_LIMITS]
    try:
        await redis.evalsha(_TOUCH_SHA, len(keys_), *keys_, *args)
    except NoScriptError:
        # Redis restarted or failed over (its script cache is empty): load it once more.
        await redis.eval(_TOUCH, len(keys_), *keys_, *args)


def queue_reads(pipe: Pipeline, page_id: str, psids: Sequence[str]) -> None:
    """Queue the reads of each PSID's last interaction on a pipeline (``len(TIERS)`` replies
    per PSID, for ``newest``)."""
    for psid in psids:
        for key in bucket_keys(page_id, psid):
            pipe.hget(key, psid)


def newest(replies: Sequence[Any]) -> list[int | None]:
    """Each PSID's last interaction (unix seconds) or None, from ``queue_reads``' replies."""
    tiers = len(TIERS)
    found: list[int | None] = []
    for i in range(0, len(replies), tiers):
        times = [int(raw) for raw in replies[i : i + tiers] if raw is not None]
        found.append(max(times) if times else None)
    return found


async def last_interactions(redis: Redis, page_id: str, psids: Sequence[str]) -> list[int | None]:
    """Each PSID's last interaction (unix seconds) or None, in one round trip."""
    if not psids:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        queue_reads(pipe, page_id, psids)
        replies: list[Any] = await pipe.execute()
    return newest(replies)


async def inside(redis: Redis, page_id: str, psids: Sequence[str], now_s: float) -> list[bool]:
    """Whether each person is inside their window now: one call to window_inside.lua for the
    batch (thousands), where ``last_interactions``' HGET per person and tier, each packed by the
    client, cost far more than Redis's work."""
    if not psids:
        return []
    since = int(now_s) - WINDOW_S
    last = await redis.hget(keys.window_heard(page_id), "last")
    if last is None or int(last) <= since:
        return [False] * len(psids)  # nobody heard from in 24 h: skip packing them all
    packed = " ".join(f"{psid} {zlib.crc32(psid.encode())}" for psid in psids)
    keys_ = [keys.window_heard(page_id)]
    args: list[str | int] = [since, _bucket_prefix(page_id), _TIER_LAYOUT, packed]
    try:
        flags = await redis.evalsha(_INSIDE_SHA, 1, *keys_, *args)
    except NoScriptError:
        flags = await redis.eval(_INSIDE, 1, *keys_, *args)
    text = flags.decode() if isinstance(flags, bytes) else str(flags)
    return [flag == "1" for flag in text]


def _bucket_prefix(page_id: str) -> str:
    """The page's bucket keys without the bucket number (keys.window_bucket)."""
    return keys.window_bucket(page_id, 0).removesuffix("0")


_TIER_LAYOUT = ",".join(f"{offset}:{size}" for offset, size in zip(_OFFSETS, TIERS, strict=True))


def in_window(last_s: int | None, now_s: float) -> bool:
    return last_s is not None and now_s - last_s < WINDOW_S


async def heard_since(redis: Redis, page_id: str) -> int | None:
    """Since when (unix seconds) the page's webhooks flow without a week's silence, or None."""
    raw = await redis.hget(keys.window_heard(page_id), "first")
    return None if raw is None else int(raw)


def flowing_a_day(first_s: int | None, now_s: float) -> bool:
    """The page's webhooks have been flowing for the whole of one window."""
    return first_s is not None and now_s - first_s >= WINDOW_S


async def rule_for(
    redis: Redis, page_id: str, messaging_type: str, asked: str, has_fallback: bool
) -> str:
    """The window rule a new job gets: what it asked; "require" when it carries a fallback
    (whose point is people outside the window); else "require" for the window's lanes
    (RESPONSE, UPDATE) on a page heard from for 24 hours, and "ignore" otherwise, so a page
    not wired to webhooks does not skip every recipient."""
    if asked:
        return asked
    if has_fallback:
        return "require"
    if messaging_type not in ("RESPONSE", "UPDATE"):
        return "ignore"
    first_s = await heard_since(redis, page_id)
    return "require" if flowing_a_day(first_s, time.time()) else "ignore"
