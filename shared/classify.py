"""What to do with each provider answer: one table, tested case by case.

Codes from Meta's Send API error reference and Graph API error handling guide:
  rate limits   4 (app), 17 (user), 32 (page), 613 (send rate), HTTP 429 -> throttled, retry
  transient     1, 2 (unexpected; 2 may also mean the person blocked the page: the retry
                budget bounds it), 1200 (temporary send failure), is_transient, HTTP 5xx,
                timeouts and connection resets -> retry with backoff, then failed
  fatal         190 (token invalid or expired), 100/33 (the page no longer exists) -> the
                job cannot go on
  otherwise     551 (person unavailable), 10 (outside the messaging window), 100 (bad
                parameter, e.g. no such PSID), 200/230 (permissions), 368 (blocked for
                policy) ... -> failed at once with the provider's code and subcode
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Literal

import msgspec

from shared.provider import SendResult

Verdict = Literal["sent", "retry", "throttled", "failed", "fatal"]
RATE_LIMIT_CODES = frozenset({4, 17, 32, 613})
TRANSIENT_CODES = frozenset({1, 2, 1200})
FATAL_CODES = frozenset({190})
FATAL_PAIRS = frozenset({(100, 33)})


class Decision(msgspec.Struct, frozen=True):
    verdict: Verdict
    code: str = ""
    subcode: str = ""
    message: str = ""
    retry_after: float | None = None


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
    if error.code in RATE_LIMIT_CODES or result.status == 429:
        return Decision("throttled", code, subcode, error.message, result.retry_after)
    if error.code in FATAL_CODES or (error.code, error.error_subcode) in FATAL_PAIRS:
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
