"""WhatsApp's messaging tier at dispatch: how many unique people a business portfolio may reach
outside a service window in a moving 24 h (250, 2,000, 10,000, 100,000 or unlimited; per
portfolio since 2025-10-07, FANOUT_WA_PORTFOLIOS / FANOUT_WA_TIERS).

The submit refuses a job that would not fit (or accepts it as ``"tier": "spread"``); dispatch
is where the tier is actually kept, fleet-wide, for every template job, spread or not:

  split(people)     before a chunk's recipients get their permits, a few calls per chunk:
                    who is inside their 24-hour service window (``window.inside``: one script,
                    none when the number heard from nobody in 24 h; they cost nothing), then
                    one script (shared/lua/reach_admit.lua) over the rest on the portfolio's
                    zset: each person reached in the last 24 h is admitted again at no cost,
                    each new one while places are left; the others wait. A place is taken
                    before the send: a send that then fails still holds it (counting one too
                    many is safe, one too few could get the business restricted)
  wait(...)         the chunk holds the ones that wait, claiming no sender capacity and no
                    held slot (worker.py); the job shows ``page_hold: "tier_reached"`` and
                    ``hold_until`` (when the oldest entry ages out and a place returns), and
                    the chunk asks again every ``POLL_S`` (a handful of small calls). A pause
                    ends the wait (the chunk goes back to its backlog), so do a stop of the job
                    and of the consumer (the chunk goes back to the stream for the fleet)

Nobody waiting is skipped and nobody is sent beyond the tier. Text messages (free-form, only
possible inside the window) and unlimited tiers have no ``Reach`` and cost nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from typing import cast

import msgspec
from redis.asyncio import Redis

from shared import keys, window
from shared.scripts import Scripts
from shared.settings import WhatsAppSettings

MOVING_MS = 24 * 3600 * 1000
HOLD = "tier_reached"  # the job view's page_hold while chunks wait for a place
# A waiting chunk asks again this often: for a place, and its job's status (pause, cancel).
POLL_S = 5.0


class Split(msgspec.Struct, frozen=True):
    admitted: list[int]  # indexes into the people asked about, in order
    waiting: list[int]
    wait_s: float  # until a place returns (0 when nobody waits)
    reached: int  # people the portfolio has reached in the moving 24 h, after this call


class Reach:
    """One number's portfolio tier, for one template job's chunks."""

    __slots__ = ("_redis", "_scripts", "key", "sender", "tier")

    def __init__(self, scripts: Scripts, redis: Redis, sender: str, portfolio: str, tier: int):
        self._scripts = scripts
        self._redis = redis
        self.sender = sender
        self.tier = tier
        self.key = keys.wa_reached(portfolio)

    async def split(self, people: Sequence[str]) -> Split:
        """Who of ``people`` may be sent the template now (a place taken for each new one)."""
        if not people:
            return Split([], [], 0.0, 0)
        inside = await window.inside(self._redis, self.sender, people, time.time())
        outside = [i for i, open_ in enumerate(inside) if not open_]
        if not outside:
            return Split(list(range(len(people))), [], 0.0, 0)
        flags, wait_ms, reached = await self._scripts.reach_admit(
            keys=[self.key], args=[self.tier, MOVING_MS, *(people[i] for i in outside)]
        )
        refused = {i for i, flag in zip(outside, _text(flags), strict=True) if flag == "0"}
        admitted = [i for i in range(len(people)) if i not in refused]
        return Split(admitted, sorted(refused), int(wait_ms) / 1000, int(reached))

    async def wait(
        self,
        job: keys.JobKeys,
        wait_s: float,
        stopped: Callable[[], bool],
        stopping: asyncio.Event,
    ) -> bytes:
        """Show on the job why it waits and until when a place returns (``wait_s``), then wait
        at most ``POLL_S`` (a place may come sooner: a tier raised, a reach trimmed by hand),
        or until ``stopping`` is set; the job's status then: ``b"running"``/``b"pending"`` to
        ask again, else it was paused (``b"paused"``), stopped or is gone (``b""``)."""
        until_ms = int((time.time() + wait_s) * 1000)
        await self._scripts.job_hold(keys=[job.hash], args=[HOLD, until_ms])
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), min(wait_s, POLL_S))
        if stopped() or stopping.is_set():
            return b""
        status = cast(bytes | None, await self._redis.hget(job.hash, "status"))
        return status or b""


async def release(redis: Redis, job: keys.JobKeys) -> None:
    """A chunk that waited found its places: the job no longer shows the hold (a chunk of it
    still waiting shows it again at its next ask, within POLL_S)."""
    await redis.hdel(job.hash, "hold", "hold_until")


def runs(indexes: list[int]) -> list[list[int]]:
    """Sorted indexes cut into runs of consecutive ones: the ledger marks a batch attempted
    as one range, which must not cover people still waiting for a place."""
    out: list[list[int]] = []
    for i in indexes:
        if out and out[-1][-1] == i - 1:
            out[-1].append(i)
        else:
            out.append([i])
    return out


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


def for_job(
    scripts: Scripts,
    redis: Redis,
    settings: WhatsAppSettings,
    channel: str,
    sender: str,
    message: msgspec.Struct,
) -> Reach | None:
    """The tier a job's sends count against: WhatsApp templates only (the one message WhatsApp
    lets a business send outside a service window), when the number's portfolio has a limited
    tier; None (every other job) costs nothing."""
    if channel != "whatsapp" or getattr(message, "template", None) is None:
        return None
    tier = settings.tier_for(sender)
    if tier is None:
        return None
    return Reach(scripts, redis, sender, settings.portfolio_of(sender), tier)
