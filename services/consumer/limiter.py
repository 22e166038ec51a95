"""Fleet-wide pacing per page: permits from the shared GCRA, and the shared cool-down.

Each consumer keeps a few permits per page in hand and asks Redis for more in small batches
(at most the burst tolerance's worth), so Redis sees one call per batch, not per message, and
the whole fleet together never gets more than rate x window + burst permits in any window.
When the provider says "slow down", the page's cool-down pauses every consumer's permits; when
its answers turn mostly transient, its circuit breaker holds them and lets one probe through at
a time (``pagehealth.py``); when Meta restricts the page, none are given until a user resumes.

A strict limit (``Limiters(strict=True)``, WhatsApp's "up to 80 messages per second" per
number) must hold in *every* one-second window, and the burst tolerance above does not: with
FANOUT_RATE_BURST_MS=50 at 80/s, permits come in batches of 4 every 50 ms, so a second that
starts on a batch holds 84, and a consumer's unused permits in hand add to it later; nor does
pacing alone, since a permit used late and the next on time come closer than its interval
(one permit per call with no tolerance still let 11 through in a second at 10/s, on a loaded
machine). So the GCRA only sets a strict sender's average, at ``strict_rate`` (the rate less
STRICT_JITTER_S's share: 72.7/s for 80), and every second is kept by the sender's log of sends,
checked just before each request (services/consumer/pairs.py): at most the rate in any
1 s + STRICT_JITTER_S, so the provider sees at most the rate in any second as long as a request
reaches it within STRICT_JITTER_S of that check. 130429 remains handled as a throttle, should
Meta count differently.

Audio and video take a permit from the page's media limit (10/s by default) and then one from
the page's own limit (``MediaLimiter``): two calls rather than one script over both keys,
because a GCRA's state is a single time, so a permit reserved on the page for when the media
permit comes due (seconds ahead) would either queue the page's text behind it or be used late
and outrun the page's rate. Taken in turn, each permit is reserved for when it is used.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from services.consumer.pagehealth import PROBE_LEASE_MS, PageHealth
from shared import keys
from shared.scripts import Scripts

log = logging.getLogger("fanout.consumer")

_COOL_BASE_MS = 1_000
_COOL_CAP_MS = 15 * 60 * 1000
# Lateness between a strict sender's last check (its send log) and its request reaching the
# provider that the pacing absorbs (see the module docstring).
STRICT_JITTER_S = 0.1


def strict_rate(rate: int) -> float:
    """A strict sender's average pace: its send log admits ``rate`` per 1 s + STRICT_JITTER_S,
    so permits at this rate are rarely turned back there."""
    return rate / (1 + STRICT_JITTER_S)


class Permits(Protocol):
    """What a job's senders pace themselves with."""

    health: PageHealth

    async def take(self, wanted: int) -> int: ...

    async def cool_down(self, hint_s: float | None) -> float | None: ...

    def cooling_s(self) -> float: ...


class PageLimiter:
    def __init__(
        self,
        scripts: Scripts,
        page_id: str,
        rate: float,
        burst_ms: int,
        key: str | None = None,
        held_by: str | None = None,
    ) -> None:
        self.scripts = scripts
        self.key = key or keys.rate(page_id)
        # A media limit is also held while its page cools down (the page's rate key), so no
        # media permits pile up to be used all at once when the page sends again.
        self.held_keys = [held_by] if held_by else []
        self.holds = 0  # times a take waited for a pause, the breaker or a restriction
        self.rate = rate
        self.burst_s = burst_ms / 1000
        self.batch = max(1, int(rate * burst_ms // 1000))
        self.in_hand = 0
        self.paused_until = 0.0  # loop time; a cool-down this consumer already knows of
        self.unlimited_until = 0.0  # an unlimited page asks Redis about cool-downs this often
        self._lock = asyncio.Lock()
        self.state_key = keys.page_state(page_id)
        # The page's health: its breaker stops permits, and its probe is one of them.
        self.health = PageHealth(scripts, page_id)
        self.health.on_hold = self.drop_permits

    def drop_permits(self) -> None:
        """The page is held: permits in hand are not to be used."""
        self.in_hand = 0
        self.unlimited_until = 0.0

    async def take(self, wanted: int) -> int:
        """Wait until at least one permit is ours; returns how many (1..wanted) were taken."""
        loop = asyncio.get_running_loop()
        async with self._lock:  # FIFO: chunks of one page take turns
            while self.in_hand == 0:
                now = loop.time()
                if now < self.paused_until:
                    self.holds += 1
                    await asyncio.sleep(self.paused_until - now)
                    continue
                if self.rate == 0 and now < self.unlimited_until:
                    return wanted
                granted, wait_ms, state = await self.scripts.take_permits(
                    keys=[self.key, self.state_key, *self.held_keys],
                    args=[self.rate, self.burst_s * 1000, self.batch, PROBE_LEASE_MS],
                )
                self.health.learn(int(state), loop.time())
                if int(state) == 2:  # the fleet's one probe of a held page: one send
                    self.in_hand = 1
                    break
                if self.rate == 0 and granted:
                    self.unlimited_until = loop.time() + self.burst_s
                    return wanted
                if not int(granted):
                    self.holds += 1
                if int(wait_ms):
                    await asyncio.sleep(int(wait_ms) / 1000)
                self.in_hand = int(granted)
            taken = min(wanted, self.in_hand)
            self.in_hand -= taken
            return taken

    def cooling_s(self) -> float:
        """Seconds left of a cool-down this consumer knows of (0 when none)."""
        return max(0.0, self.paused_until - asyncio.get_running_loop().time())

    async def cool_down(self, hint_s: float | None) -> float | None:
        """Pause the page fleet-wide. Returns the new pause's seconds, or None when this
        consumer already knew of a pause in force (answers to requests sent before it)."""
        loop = asyncio.get_running_loop()
        self.in_hand = 0
        self.unlimited_until = 0.0
        if loop.time() < self.paused_until:
            return None
        hint_ms = int((hint_s or 0) * 1000)
        left_ms = int(
            await self.scripts.cool_down(
                keys=[self.key], args=[hint_ms, _COOL_BASE_MS, _COOL_CAP_MS]
            )
        )
        self.paused_until = loop.time() + left_ms / 1000
        return left_ms / 1000


class MediaLimiter:
    """Audio and video: a permit of the page's media limit, then one of the page's limit."""

    def __init__(self, media: PageLimiter, page: PageLimiter) -> None:
        self.media = media
        self.page = page
        self.health = page.health  # the breaker and the restriction are the page's

    async def take(self, wanted: int) -> int:
        """The scarcer limit first, so the page's permits are never held waiting for it. Media
        permits that waited out a page's pause (or its breaker) are dropped, not used: their
        slots have passed, and the senders that waited together would go at once."""
        while True:
            media = await self.media.take(wanted)
            holds = self.page.holds
            taken = await self.page.take(media)
            if self.page.holds == holds:
                self.media.in_hand += media - taken  # still ours: the next take uses them
                return taken
            self.media.in_hand = 0
            self.page.in_hand += taken  # the page's are fresh (maybe its probe): kept for later

    def cooling_s(self) -> float:
        return self.page.cooling_s()

    async def cool_down(self, hint_s: float | None) -> float | None:
        # Meta's answer does not say which limit it meant: pause the page (media included).
        self.media.in_hand = 0
        return await self.page.cool_down(hint_s)


class Limiters:
    def __init__(
        self,
        scripts: Scripts,
        default_rate: int,
        rates: dict[str, int],
        burst_ms: int,
        media_rate: int = 0,
        media_rates: dict[str, int] | None = None,
        *,
        strict: bool = False,
    ):
        self.scripts = scripts
        self.strict = strict  # every one-second window within the rate (module docstring)
        self.default_rate = default_rate
        self.rates = rates
        self.burst_ms = burst_ms
        self.media_rate = media_rate
        self.media_rates = media_rates or {}
        self._pages: dict[str, PageLimiter] = {}
        self._media: dict[str, MediaLimiter] = {}

    def for_page(self, page_id: str) -> PageLimiter:
        limiter = self._pages.get(page_id)
        if limiter is None:
            rate = self.rates.get(page_id, self.default_rate)
            paced = strict_rate(rate) if self.strict and rate else rate
            limiter = PageLimiter(self.scripts, page_id, paced, self.burst_ms)
            self._pages[page_id] = limiter
        return limiter

    def for_message(self, page_id: str, media: bool) -> Permits:
        """The page's limiter; for audio and video, its media limit as well (unless 0)."""
        rate = self.media_rates.get(page_id, self.media_rate)
        if not media or rate == 0:
            return self.for_page(page_id)
        limiter = self._media.get(page_id)
        if limiter is None:
            media_key = keys.media_rate(page_id)
            own = PageLimiter(
                self.scripts, page_id, rate, self.burst_ms, media_key, keys.rate(page_id)
            )
            limiter = MediaLimiter(own, self.for_page(page_id))
            self._media[page_id] = limiter
        return limiter
