"""Fleet-wide pacing per page: permits from the shared GCRA, and the shared cool-down.

Each consumer keeps a few permits per page in hand and asks Redis for more in small batches
(at most the burst tolerance's worth), so Redis sees one call per batch, not per message, and
the whole fleet together never gets more than rate x window + burst permits in any window.
When the provider says "slow down", the page's cool-down pauses every consumer's permits.
"""

from __future__ import annotations

import asyncio
import logging
import random

from shared import keys
from shared.scripts import Scripts

log = logging.getLogger("fanout.consumer")

_COOL_BASE_MS = 1_000
_COOL_CAP_MS = 15 * 60 * 1000


class PageLimiter:
    def __init__(self, scripts: Scripts, page_id: str, rate: int, burst_ms: int) -> None:
        self.scripts = scripts
        self.key = keys.rate(page_id)
        self.rate = rate
        self.burst_ms = burst_ms
        self.batch = max(1, rate * burst_ms // 1000)
        self.in_hand = 0
        self._lock = asyncio.Lock()

    async def take(self, wanted: int) -> int:
        """Wait until at least one permit is ours; returns how many (1..wanted) were taken."""
        if self.rate == 0:
            return wanted
        async with self._lock:  # FIFO: chunks of one page take turns
            while self.in_hand == 0:
                granted, wait_ms = await self.scripts.take_permits(
                    keys=[self.key], args=[self.rate, self.burst_ms, max(wanted, self.batch)]
                )
                if granted:
                    self.in_hand = int(granted)
                else:
                    # A little jitter so the fleet does not ask again in lockstep.
                    await asyncio.sleep(int(wait_ms) / 1000 * (1 + random.random() * 0.1))
            taken = min(wanted, self.in_hand)
            self.in_hand -= taken
            return taken

    async def cool_down(self, hint_s: float | None) -> float:
        """Pause the page fleet-wide; returns the seconds left in the pause."""
        self.in_hand = 0
        hint_ms = int((hint_s or 0) * 1000)
        left_ms = await self.scripts.cool_down(
            keys=[self.key], args=[hint_ms, _COOL_BASE_MS, _COOL_CAP_MS]
        )
        return int(left_ms) / 1000


class Limiters:
    def __init__(self, scripts: Scripts, default_rate: int, rates: dict[str, int], burst_ms: int):
        self.scripts = scripts
        self.default_rate = default_rate
        self.rates = rates
        self.burst_ms = burst_ms
        self._pages: dict[str, PageLimiter] = {}

    def for_page(self, page_id: str) -> PageLimiter:
        limiter = self._pages.get(page_id)
        if limiter is None:
            rate = self.rates.get(page_id, self.default_rate)
            limiter = PageLimiter(self.scripts, page_id, rate, self.burst_ms)
            self._pages[page_id] = limiter
        return limiter
