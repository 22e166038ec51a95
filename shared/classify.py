"""Verdicts: what the consumer does with one provider answer, for every channel.

Each provider's module holds its own answer table (one table, tested row by row) and returns
these ``Decision``s (shared/providers/: Messenger's table is shared/providers/messenger.py).
Messenger's names (``classify``, ``PAIRS``, ``SUPPRESS`` and the code sets) are still
importable from here, resolved on first use: the provider's module imports this one.

  verdict     what the consumer does (services/consumer/delivery.py)
  sent        recorded
  retry       backoff and a fresh permit, within the recipient's retry budget
  throttled   the sender cools down fleet-wide; the recipient is retried
  failed      recorded with the provider's code; ``suppress``: the person joins the
              sender's suppression list
  fatal       the recipient fails and the job is stopped
  restricted  the sender's jobs are paused fleet-wide until a user resumes one
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any, Literal

import msgspec

Verdict = Literal["sent", "retry", "throttled", "failed", "fatal", "restricted"]


class Decision(msgspec.Struct, frozen=True):
    verdict: Verdict
    code: str = ""
    subcode: str = ""
    message: str = ""
    retry_after: float | None = None
    suppress: bool = False  # permanent for the person: add them to the page's suppressions
    # About this one person's pace, not the sender's (WhatsApp's pair limit, 131056): retry
    # them after retry_after without cooling the sender down or counting against its health.
    pace_person: bool = False


SENT = Decision("sent")


def backoff(
    attempt: int,
    *,
    base: float = 0.25,
    cap: float = 30.0,
    retry_after: float | None = None,
    rand: Callable[[], float] = random.random,
) -> float:
    """Seconds to wait before retry number ``attempt`` (1-based): full jitter, capped;
    the provider's Retry-After wins when it says more."""
    ceiling = min(cap, base * 2.0 ** (attempt - 1))
    delay = rand() * ceiling
    if retry_after is not None:
        return max(delay, min(retry_after, 15 * 60.0))
    return delay


_MESSENGER_NAMES = frozenset(
    {"classify", "PAIRS", "SUPPRESS", "RATE_LIMIT_CODES", "TRANSIENT_CODES", "FATAL_CODES"}
)


def __getattr__(name: str) -> Any:
    """Messenger's table, moved to shared/providers/messenger.py, by its old names. Resolved
    lazily because that module imports this one (PEP 562)."""
    if name in _MESSENGER_NAMES:
        from shared.providers import messenger

        return getattr(messenger, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
