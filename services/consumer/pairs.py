"""A fleet-wide permit per (sender, recipient): WhatsApp's pair limit, one message every 6 s
from one number to one person (above it Meta answers 131056).

The provider names the limit (``shared.providers.RecipientLimit``: a key per sender and
recipient, and the interval); a job whose provider names none has no ``PairPermits`` and pays
nothing. For the others the Senders (delivery.py) ask, just before each POST:

  take(to)            0: the permit is ours, send now. Otherwise the seconds until the person
                      may be free: the recipient goes back on the queue after that wait (and a
                      fresh permit of the sender's rate), the sender moves on to the next one,
                      and the wait is not an attempt (nothing was sent)
  done(to)            the answer came: the person is free the interval after it. Timed from
                      the answer, not the request, since Meta counts from when the message
                      reached it, which is before the answer: two sends to one person are at
                      least the interval apart at Meta whatever the latencies
  refused(to, n, s)   Meta answered 131056 all the same (another sender of the number, a
                      burst it counted differently): nobody in the fleet sends to that person
                      from the number for Meta's back-off, 4^n s (at least the interval and
                      the answer's hint, at most ``BACKOFF_CAP_S``); None once the person has
                      been refused ``MAX_REFUSALS`` times: they fail with the code

One script (shared/lua/pair_permit.lua) per call, in the number's slot. The number itself is
neither cooled down nor weighed by its breaker for these answers: they are about one person.
"""

from __future__ import annotations

from shared.providers import RecipientLimit
from shared.scripts import Scripts

BACKOFF_CAP_S = 15 * 60.0
# Meta: "retry after 4^X seconds"; 4^8 s is capped, so the eighth refusal comes after about an
# hour of waiting in all: the person is failed with 131056 then, not retried for ever.
MAX_REFUSALS = 8


def backoff_s(refusals: int, interval_s: float, hint_s: float | None = None) -> float:
    """Seconds a person waits after their ``refusals``-th pair-limit answer: Meta's 4^X, at
    least the pair interval and the answer's own hint, capped."""
    return min(BACKOFF_CAP_S, max(4.0**refusals, interval_s, hint_s or 0.0))


class PairPermits:
    """One sender's per-recipient permits (one instance per sender and consumer)."""

    __slots__ = ("_flight_ms", "_interval_ms", "_key", "_scripts", "sender")

    def __init__(
        self, scripts: Scripts, sender: str, limit: RecipientLimit, request_timeout_s: float
    ) -> None:
        self._scripts = scripts
        self.sender = sender
        self._key = limit.key
        self._interval_ms = limit.interval_ms
        # A consumer that dies mid-request frees the person by itself, once the request could
        # no longer be in flight and the interval has passed.
        self._flight_ms = limit.interval_ms + int(request_timeout_s * 1000) + 1000

    @property
    def interval_s(self) -> float:
        return self._interval_ms / 1000

    async def take(self, to: str) -> float:
        """0.0 when the permit is ours (send now), else the seconds to wait for it."""
        if self._interval_ms <= 0:
            return 0.0
        wait_ms = await self._scripts.pair_permit(
            keys=[self._key(self.sender, to)], args=["take", self._flight_ms]
        )
        return int(wait_ms) / 1000

    async def done(self, to: str) -> None:
        """The answer came: the person is free again one interval from now."""
        if self._interval_ms <= 0:
            return
        await self._scripts.pair_permit(
            keys=[self._key(self.sender, to)], args=["done", self._interval_ms]
        )

    async def refused(self, to: str, refusals: int, hint_s: float | None) -> float | None:
        """Meta refused the pair: hold the person fleet-wide for the back-off; its seconds, or
        None when the person has been refused too often and is to fail."""
        if refusals >= MAX_REFUSALS:
            await self.done(to)
            return None
        wait_ms = int(backoff_s(refusals, self.interval_s, hint_s) * 1000)
        held_ms = await self._scripts.pair_permit(
            keys=[self._key(self.sender, to)], args=["hold", wait_ms]
        )
        return int(held_ms) / 1000
