"""The 24-hour window: each person's last interaction with a page, as Meta's webhooks tell it.

Storage (budget: 64 bytes of Redis per tracked (page, PSID), Redis 7.0, so no per-field
expiry): a page's people are spread over ``BUCKETS`` small hashes PSID -> unix seconds, in the
page's hash-tag slot. Each bucket stays under Redis's ``hash-max-listpack-entries`` (128) for up
to about two million people per page, so it is a listpack: a numeric PSID and its time cost
about 16 bytes, against ~80 for a hash-table entry or a key of its own. The bucket prunes its
own entries older than ``KEEP_S`` (a little over 7 days, for the 7-day tags) once a day, and
expires as a whole when no one in it was heard from for ``KEEP_S``. ``bench/window_memory.py``
prints the measured bytes per person.

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

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from shared import keys

BUCKETS = 1 << 15
WINDOW_S = 24 * 3600
# Seven days for the CUSTOMER_FEEDBACK and HUMAN_AGENT tags, plus a day of slack.
KEEP_S = 8 * 24 * 3600
PRUNE_EVERY_S = 24 * 3600

_TOUCH = (resources.files("shared") / "lua" / "window_touch.lua").read_text("utf-8")
_TOUCH_SHA = hashlib.sha1(_TOUCH.encode()).hexdigest()


def bucket_of(psid: str) -> int:
    return zlib.crc32(psid.encode()) % BUCKETS


async def touch(redis: Redis, page_id: str, psid: str, ts_ms: int) -> None:
    """Record that the person interacted with the page at ts_ms (an event's ``timestamp``):
    idempotent, the newest timestamp wins, whatever order events arrive in."""
    keys_ = [keys.window_bucket(page_id, bucket_of(psid)), keys.window_heard(page_id)]
    args: list[str | int] = [psid, ts_ms // 1000, KEEP_S, PRUNE_EVERY_S]
    try:
        await redis.evalsha(_TOUCH_SHA, len(keys_), *keys_, *args)
    except NoScriptError:
        # Redis restarted or failed over (its script cache is empty): load it once more.
        await redis.eval(_TOUCH, len(keys_), *keys_, *args)


async def last_interactions(redis: Redis, page_id: str, psids: Sequence[str]) -> list[int | None]:
    """Each PSID's last interaction (unix seconds) or None, in one round trip."""
    if not psids:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        for psid in psids:
            pipe.hget(keys.window_bucket(page_id, bucket_of(psid)), psid)
        replies: list[bytes | None] = await pipe.execute()
    return [None if raw is None else int(raw) for raw in replies]


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
