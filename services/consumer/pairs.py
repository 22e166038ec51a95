"""The last permit before a POST, fleet-wide: WhatsApp's pair limit (one message every 6 s
from one number to one person; above it Meta answers 131056) and a strict sender's rate in
every second.

The provider names the pair limit (``shared.providers.RecipientLimit``: a key per sender and
recipient, and the interval) and whether its rate is strict (``Rates.strict``, a number's
mps); a job whose provider names neither has no ``PairPermits`` and pays nothing (Messenger).
For the others the Senders (delivery.py) ask, just before each POST, in one script call:

  take(to)            0: the send may go now: the person's permit is ours, and the sender's
                      log of sends (strict rates) had room for it in the last second. Else the
                      seconds to wait: the recipient goes back on the queue after that wait
                      (and a fresh permit of the sender's rate), the sender moves on to the next
                      one, and the wait is not an attempt (nothing was sent). The log closes
                      what the GCRA (limiter.py) cannot: its permits are taken a batch ahead,
                      and one used late then one on time would be closer than the rate allows;
                      the log admits at most the rate in any 1 s + STRICT_JITTER_S, timed here
  done(to)            the answer came: the person is free the interval after it. Timed from
                      the answer, not the request, since Meta counts from when the message
                      reached it, which is before the answer: two sends to one person are at
                      least the interval apart at Meta whatever the latencies
  refused(to, n, s)   Meta answered 131056 all the same (an app outside fanout sending from
                      the number, Meta counting differently): nobody in the fleet sends to that
                      person from the number for Meta's back-off, 4^n s for their n-th try (at
                      least the interval and the answer's hint, at most ``BACKOFF_CAP_S``).
                      The Senders retry them as a transient answer that neither cools the
                      number down nor counts against its breaker; their retry budget
                      (FANOUT_MAX_ATTEMPTS, FANOUT_RETRY_BUDGET_S) bounds the refusals, after
                      which they fail with 131056

One script (shared/lua/pair_permit.lua) per call, in the number's slot. The number itself is
neither cooled down nor weighed by its breaker for these answers: they are about one person.
"""

from __future__ import annotations

import asyncio
import logging

from redis.exceptions import RedisError

from services.consumer.limiter import STRICT_JITTER_S
from shared import keys
from shared.classify import Decision
from shared.providers import Provider, RecipientLimit
from shared.scripts import Scripts
from shared.settings import ConsumerSettings

log = logging.getLogger("fanout.consumer")

BACKOFF_CAP_S = 15 * 60.0


def backoff_s(refusals: int, interval_s: float, hint_s: float | None = None) -> float:
    """Seconds a person waits after their ``refusals``-th pair-limit answer: Meta's 4^X, at
    least the pair interval and the answer's own hint, capped."""
    return min(BACKOFF_CAP_S, max(4.0**refusals, interval_s, hint_s or 0.0))


_LOG_WINDOW_MS = round(1000 * (1 + STRICT_JITTER_S))
CONCURRENT_CALLS = 32  # per consumer (Consumer passes one semaphore to every job's permits)


class PairPermits:
    """One sender's last permits before a POST (one instance per job and consumer)."""

    __slots__ = (
        *("_calls", "_cap", "_flight_ms", "_interval_ms", "_key", "_log", "_scripts"),
        "sender",
    )

    def __init__(
        self,
        scripts: Scripts,
        sender: str,
        limit: RecipientLimit | None,
        request_timeout_s: float,
        cap: int = 0,
        calls: asyncio.Semaphore | None = None,
    ) -> None:
        self._scripts = scripts
        # The consumer's bound on these calls at once: at an unlimited rate every sender would
        # ask together, each on a Redis connection of its own (a storm of connects that, on a
        # loaded host, timed out and let the chunks' leases lapse).
        self._calls = calls or asyncio.Semaphore(CONCURRENT_CALLS)
        self.sender = sender
        self._key = keys.wa_pair if limit is None else limit.key
        self._interval_ms = 0 if limit is None else limit.interval_ms
        # A consumer that dies mid-request frees the person by itself, once the request could
        # no longer be in flight and the interval has passed.
        interval_ms = self._interval_ms
        self._flight_ms = interval_ms + int(request_timeout_s * 1000) + 1000 if interval_ms else 0
        self._cap = cap  # sends in any 1 s + STRICT_JITTER_S; 0: no log
        self._log = keys.rate_log(sender)

    @property
    def interval_s(self) -> float:
        return self._interval_ms / 1000

    async def take(self, to: str) -> float:
        """0.0 when the send may go now, else the seconds to wait."""
        async with self._calls:
            wait_ms = await self._scripts.pair_permit(
                keys=[self._key(self.sender, to), self._log],
                args=["take", self._flight_ms, self._cap, _LOG_WINDOW_MS, to],
            )
        return int(wait_ms) / 1000

    async def done(self, to: str) -> None:
        """The answer came: the person is free again one interval from now."""
        if self._interval_ms <= 0:
            return
        async with self._calls:
            await self._scripts.pair_permit(
                keys=[self._key(self.sender, to), self._log], args=["done", self._interval_ms]
            )

    async def refused(self, to: str, refusals: int, hint_s: float | None) -> float:
        """Meta refused the pair: hold the person fleet-wide for the back-off; its seconds."""
        wait_ms = int(backoff_s(refusals, self.interval_s, hint_s) * 1000)
        async with self._calls:
            held_ms = await self._scripts.pair_permit(
                keys=[self._key(self.sender, to), self._log], args=["hold", wait_ms]
            )
        return int(held_ms) / 1000


def for_job(
    scripts: Scripts,
    provider: Provider,
    settings: ConsumerSettings,
    sender: str,
    calls: asyncio.Semaphore | None = None,
) -> PairPermits | None:
    """A job's last permits: None (no cost) unless its provider names a pair limit or a
    strict rate (WhatsApp)."""
    limit = provider.recipient_limit(settings)
    rates = provider.rates(settings)
    cap = rates.per_sender.get(sender, rates.default) if rates.strict else 0
    if (limit is None or limit.interval_ms <= 0) and cap == 0:
        return None
    return PairPermits(scripts, sender, limit, settings.request_timeout_s, cap, calls)


# --- the Senders' two calls (delivery.py): what they do with a permit and with an answer ---

_NO_REDIS_WAIT_S = 1.0  # fail closed: without Redis no permit, so no send; ask again soon


async def wait_s(pairs: PairPermits, to: str) -> float:
    """Before the POST: 0.0 to send now (the permit is ours), else how long the person waits."""
    try:
        return await pairs.take(to)
    except (RedisError, OSError) as exc:
        log.warning("no pair permit: Redis unavailable", extra={"error": str(exc)})
        return _NO_REDIS_WAIT_S


async def answered(pairs: PairPermits, to: str, decision: Decision, attempt: int) -> None:
    """After the answer: the person is free one interval from now; after a pair-limit answer
    (``pace_person``, 131056) they are held fleet-wide for Meta's back-off instead, and the
    Senders retry them as a transient answer (their retry budget bounds the refusals), whose
    next permit waits for the hold."""
    try:
        if decision.pace_person:
            await pairs.refused(to, attempt, decision.retry_after)
        else:
            await pairs.done(to)
    except (RedisError, OSError) as exc:
        # The permit lapses by itself (the interval plus the request timeout).
        log.warning("pair permit not updated", extra={"error": str(exc)})
