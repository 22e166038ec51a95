"""The few exception types fanout raises, split by what the caller does next.

    FanoutError
     ├── ApiError            the producer refuses a request: answer its status and JSON error
     └── SettingsError       (shared.settings) a FANOUT_* variable is wrong: exit at start

Provider answers are not exceptions: ``shared.classify`` turns each into a verdict (sent,
retry, throttled, failed, fatal), because on the hot path a value is cheaper and clearer.
"""

from __future__ import annotations


class FanoutError(Exception):
    """Base of fanout's own errors."""


class ApiError(FanoutError):
    """A request the producer refuses; nothing has been written for it."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        field: str | None = None,
        details: dict[str, object] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        # More named values beside code, message and field in the JSON error (e.g. a
        # WhatsApp tier refusal's can_send_now), for a client to act on without parsing text.
        self.details = details
