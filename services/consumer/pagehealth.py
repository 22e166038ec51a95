"""Page health: the circuit breaker over a page's recent answers, and retry budgets in time.

A provider outage is not the recipients' fault, so it must not spend their retries:

  answers ──> PageHealth (this consumer's last answers for the page)
                ├── mostly transient ──> trip the fleet-wide breaker (breaker.lua on the
                │                        page's rate key): every consumer's permits stop; one
                │                        probe at a time, fleet-wide (take_permits.lua)
                ├── the probe's answer is not transient ──> close: full rate again
                └── healthy (few transients among answers to first attempts) ──> only
                                                then does a transient answer count as a
                                                strike against the recipient

  RetryBudget, per recipient: fails it when its transient answers span more than
  FANOUT_RETRY_BUDGET_S of time the page was not held, or when it got FANOUT_MAX_ATTEMPTS
  transient answers while the page was otherwise healthy (bounding code 2, which may also
  mean the person blocked the page).

The breaker's state lives in Redis; ``PageHealth`` keeps what this consumer last learnt of it
(from ``take_permits``) and adds up the seconds the page was held, which budgets do not count.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable

from redis.exceptions import RedisError

from shared import keys, metrics
from shared.scripts import Scripts

log = logging.getLogger("fanout.consumer")

# The last answers a consumer weighs. A trip needs at least _TRIP_MIN transient answers among
# them, to at least _TRIP_PEOPLE different recipients (a few people answered code 2 again and
# again are not an outage), and a transient share of at least _TRIP_SHARE ("mostly"): with 20%
# of answers transient at random, 50 answers of which 25 transient happen about once in a
# million windows.
_WINDOW = 50
_TRIP_MIN = 20
_TRIP_PEOPLE = 10
_TRIP_SHARE = 0.5
# A page is "otherwise healthy" (so a transient answer is the recipient's own) when, of the
# last _FIRSTS answers to first attempts, at least _HEALTHY_MIN came in and under
# _HEALTHY_SHARE were transient. First attempts only: a few recipients retried again and again
# (code 2 from people who blocked the page) must not make the page look unhealthy. With 20%
# of answers transient at random, 100 first attempts with under 5 transient is a 1-in-10,000
# event.
_FIRSTS = 100
_HEALTHY_MIN = 20
_HEALTHY_SHARE = 0.05
PROBE_INTERVAL_MS = 1_000  # between probes of a held page: recovery is seen within ~1 s
# A probe's permit is the fleet's only one until its answer; if that never comes (its consumer
# died), the next probe goes after this lease (above the default request timeout, 20 s).
PROBE_LEASE_MS = 30_000
# Held time a recipient's time budget does not count, at most: an outage longer than this plus
# FANOUT_RETRY_BUDGET_S fails the recipients it holds (so nothing waits forever).
HELD_CREDIT_S = 3600.0


class PageHealth:
    """One page as this consumer sees it: its last answers and the fleet's breaker."""

    def __init__(self, scripts: Scripts, page_id: str) -> None:
        self.scripts = scripts
        self.key = keys.rate(page_id)
        self.on_hold: Callable[[], None] = lambda: None  # the limiter drops permits in hand
        self._answers: deque[bool] = deque(maxlen=_WINDOW)  # True: transient
        self._who: deque[str] = deque(maxlen=_WINDOW)  # the recipient of each answer
        self.answered = 0  # answers that were not transient: the page works for someone
        self._transient = 0
        self._firsts: deque[bool] = deque(maxlen=_FIRSTS)  # answers to first attempts
        self._firsts_transient = 0
        self.held = False  # the breaker is open, as last learnt from Redis
        self.restricted = False  # Meta restricted the page, as last learnt from Redis
        self.probe_due = False  # the last permit was the fleet's probe: the next send is it
        self._held_since = 0.0
        self._held_total = 0.0

    # --- what take_permits says ------------------------------------------------------------

    def learn(self, state: int, now: float) -> None:
        """The page's state from a take_permits reply (0 sending, 1 held, 2 probe, 3
        restricted)."""
        restricted = state == 3
        if restricted != self.restricted:
            metrics.PAGES_HELD.labels("page_restricted").inc(1 if restricted else -1)
            self.restricted = restricted
        held = state in (1, 2)
        if state == 2:
            self.probe_due = True
        if restricted:
            self.on_hold()
        if held and not self.held:
            self.on_hold()
            self._held_since = now
            metrics.PAGES_HELD.labels("provider_outage").inc()
        elif not held and self.held and state != 3:
            self._held_total += now - self._held_since
            self._forget()
            metrics.PAGES_HELD.labels("provider_outage").dec()
        if state != 3:
            self.held = held

    def held_s(self, now: float) -> float:
        """Seconds this page was held so far (budgets in time do not count them)."""
        return self._held_total + (now - self._held_since if self.held else 0.0)

    # --- answers ---------------------------------------------------------------------------

    def record(self, transient: bool, first: bool, recipient: str) -> None:
        """One answer; ``first``: to a recipient's first attempt."""
        answers = self._answers
        if len(answers) == answers.maxlen and answers[0]:
            self._transient -= 1
        answers.append(transient)
        self._who.append(recipient)
        self._transient += transient
        self.answered += not transient
        if first:
            firsts = self._firsts
            if len(firsts) == firsts.maxlen and firsts[0]:
                self._firsts_transient -= 1
            firsts.append(transient)
            self._firsts_transient += transient

    def healthy(self) -> bool:
        n = len(self._firsts)
        return not self.held and n >= _HEALTHY_MIN and self._firsts_transient < _HEALTHY_SHARE * n

    def should_trip(self) -> bool:
        n = len(self._answers)
        if self.held or self._transient < _TRIP_MIN or self._transient < _TRIP_SHARE * n:
            return False
        people = {who for who, t in zip(self._who, self._answers, strict=True) if t}
        return len(people) >= _TRIP_PEOPLE

    def restrict(self) -> None:
        """Meta restricted the page (10/1893063): send nothing more until Redis says otherwise."""
        if not self.restricted:
            self.restricted = True
            metrics.PAGES_HELD.labels("page_restricted").inc()
        self.on_hold()

    def take_probe(self) -> bool:
        """Whether the send about to go is the probe (once per probe permit)."""
        due, self.probe_due = self.probe_due, False
        return due

    def _forget(self) -> None:
        self._answers.clear()
        self._who.clear()
        self._transient = 0
        self._firsts.clear()
        self._firsts_transient = 0

    # --- the fleet-wide breaker ------------------------------------------------------------

    async def trip(self, cause: str) -> None:
        """Hold the page fleet-wide; this consumer stops at once, the rest at their next
        permit batch."""
        self.held = True
        self.on_hold()
        self._held_since = asyncio.get_running_loop().time()
        metrics.PAGES_HELD.labels("provider_outage").inc()
        self._forget()
        if await self._call("trip"):
            metrics.BREAKER_TRIPS.inc()
            log.warning(
                "page answers mostly transient: holding it fleet-wide and probing",
                extra={"page_key": self.key, "cause": cause},
            )

    async def probe_answered(self, transient: bool) -> None:
        if not transient:
            if await self._call("close"):
                log.warning("page recovered: probe answered", extra={"page_key": self.key})
            return
        await self._call("probe_failed")

    async def _call(self, op: str) -> bool:
        try:
            return bool(await self.scripts.breaker(keys=[self.key], args=[op, PROBE_INTERVAL_MS]))
        except (RedisError, OSError) as exc:
            # The next answers decide again; a lost probe's lease lapses on its own.
            log.warning("breaker not updated", extra={"op": op, "error": str(exc)})
            return False


class RetryBudget:
    """One recipient's retries after transient answers: time spent (minus the time its page
    was held, up to HELD_CREDIT_S) and strikes. A transient answer is a strike only while the
    page is otherwise healthy: few transient answers to first attempts, and some answer that
    was not transient since this recipient's previous one (the page works for others now)."""

    __slots__ = ("answered_seen", "held_at_start", "started", "strikes")

    def __init__(self, now: float, held_s: float, answered: int = 0) -> None:
        self.started = now
        self.held_at_start = held_s
        self.answered_seen = answered
        self.strikes = 0

    def spent(
        self,
        now: float,
        held_s: float,
        healthy: bool,
        answered: int,
        max_strikes: int,
        budget_s: float,
    ) -> bool:
        """Count one more transient answer; True when the recipient has had enough."""
        if healthy and answered > self.answered_seen:
            self.strikes += 1
            if self.strikes >= max_strikes:
                return True
        self.answered_seen = answered
        credit = min(held_s - self.held_at_start, HELD_CREDIT_S)
        return (now - self.started) - credit > budget_s
