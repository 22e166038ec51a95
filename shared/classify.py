"""What to do with each provider answer: one table, subcode first, tested row by row.

Meta's error table (updated Jun 25, 2026):
https://developers.facebook.com/documentation/business-messaging/messenger-platform/error-codes
and the Graph API's error handling guide:
https://developers.facebook.com/docs/graph-api/guides/error-handling

A (code, subcode) row wins over its code's row: 613/2018338 fails the person although 613
otherwise throttles the page, and 10/1893063 restricts the page although 10 otherwise fails
the person.

  (code, subcode)    verdict     what fanout does
  10/2018278         failed      outside the allowed window: never retried in the job
  10/2534022         failed      outside the allowed window
  10/2018108         failed      the person can't receive your messages right now
  100/2018001        failed      no matching user
  200/1545041        failed      person unavailable
  551/1545041        failed      person unavailable (blocked)
  10/1893015         failed      the person opted out of these messages
  613/2018338        failed      too many tagged messages to this person (not a page throttle)
  4/2018354          failed      marketing message frequency for this person
  100/1893061        failed      retired tag (refused at submit; a job from before still ends)
  100/33             fatal       the page no longer exists: the job cannot go on
  10/1893063         restricted  the page is restricted from sending: every job of the page
                                 is paused fleet-wide until a user resumes one
  code 190           fatal       token invalid or expired: the job stops
  codes 4 17 32 613, HTTP 429
                     throttled   the page cools down fleet-wide; the recipient is retried
  codes 1 2 1200, is_transient, HTTP 5xx, timeouts, resets
                     retry       within the recipient's retry budget in time; a page whose
                                 answers turn mostly transient is held by the circuit breaker
                                 (services/consumer/pagehealth.py). Code 2 may also mean the
                                 person blocked the page: bounded per recipient
  anything else      failed      with the provider's code and subcode

The pairs in ``SUPPRESS`` (551/1545041, 200/1545041, 100/2018001, 10/1893015) are permanent
for the person: blocked the page, no such user (an unknown or invalid PSID), opted out. Their
decision carries ``suppress``, and the person joins the page's suppression list
(shared/suppressions.py), so later jobs skip them without asking Meta again.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Literal

import msgspec

from shared.provider import SendResult

Verdict = Literal["sent", "retry", "throttled", "failed", "fatal", "restricted"]
RATE_LIMIT_CODES = frozenset({4, 17, 32, 613})
TRANSIENT_CODES = frozenset({1, 2, 1200})
FATAL_CODES = frozenset({190})
# Rows that decide by code and subcode, before any rule by code alone.
PAIRS: dict[tuple[int, int], Verdict] = {
    (10, 2018278): "failed",  # outside the allowed window
    (10, 2534022): "failed",  # outside the allowed window
    (10, 2018108): "failed",  # can't receive your messages right now
    (100, 2018001): "failed",  # no matching user
    (200, 1545041): "failed",  # person unavailable
    (551, 1545041): "failed",  # person unavailable
    (10, 1893015): "failed",  # opted out of these messages
    (613, 2018338): "failed",  # too many tagged messages to this person
    (4, 2018354): "failed",  # marketing message frequency for this person
    (100, 1893061): "failed",  # retired message tag
    (100, 33): "fatal",  # the page no longer exists
    (10, 1893063): "restricted",  # the page is temporarily restricted from sending
}
# Failed rows that are permanent for the person: they join the page's suppression list.
SUPPRESS: frozenset[tuple[int, int]] = frozenset(
    {(551, 1545041), (200, 1545041), (100, 2018001), (10, 1893015)}
)


class Decision(msgspec.Struct, frozen=True):
    verdict: Verdict
    code: str = ""
    subcode: str = ""
    message: str = ""
    retry_after: float | None = None
    suppress: bool = False  # permanent for the person: add them to the page's suppressions


SENT = Decision("sent")


def classify(result: SendResult) -> Decision:
    answer = result.answer
    if answer is None:
        # No answer (timeout, reset) or one that is not Graph JSON (a proxy's HTML page).
        if 200 <= result.status < 300:
            return SENT  # the provider accepted it; only its body was odd
        if result.status == 0 or result.status >= 500 or result.status == 429:
            return Decision("retry", result.transport_error or f"http_{result.status}")
        return Decision("failed", f"http_{result.status}", "", "unreadable provider answer")
    if answer.error is None:
        if 200 <= result.status < 300:
            return SENT
        verdict: Verdict = "retry" if result.status >= 500 or result.status == 429 else "failed"
        return Decision(verdict, f"http_{result.status}", "", f"HTTP {result.status}")
    error = answer.error
    code = str(error.code)
    subcode = "" if error.error_subcode is None else str(error.error_subcode)
    if error.error_subcode is not None:
        pair = PAIRS.get((error.code, error.error_subcode))
        if pair is not None:
            suppress = (error.code, error.error_subcode) in SUPPRESS
            return Decision(pair, code, subcode, error.message, suppress=suppress)
    if error.code in RATE_LIMIT_CODES or result.status == 429:
        return Decision("throttled", code, subcode, error.message, result.retry_after)
    if error.code in FATAL_CODES:
        return Decision("fatal", code, subcode, error.message)
    if error.code in TRANSIENT_CODES or error.is_transient or result.status >= 500:
        return Decision("retry", code, subcode, error.message, result.retry_after)
    return Decision("failed", code, subcode, error.message)


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
