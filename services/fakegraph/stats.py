"""What the fake Graph API saw: requests, deliveries, duplicates, answers, per-second load.

`tick()` and `deliver()` are on the hot path: a few dict operations each, no allocation
beyond the first sighting of a page, a second or a PSID.
"""

from __future__ import annotations

import msgspec

WINDOW_SECONDS = 600
"""How many wall-clock seconds of per-page request counts `snapshot()` reports."""
MAX_DUPLICATE_IDS = 100
MAX_TEXTS = 10_000


class Stats:
    """Counters since the start or the last reset."""

    __slots__ = (
        "requests",
        "delivered",
        "unique",
        "duplicate_ids",
        "by_code",
        "max_per_second",
        "per_second",
        "deliveries",
        "texts",
        "bodies",
        "refused",
    )

    def __init__(self) -> None:
        self.requests = 0
        self.delivered = 0
        self.unique = 0
        self.duplicate_ids: list[str] = []
        self.by_code: dict[int, int] = {}
        self.max_per_second: dict[str, int] = {}
        self.per_second: dict[str, dict[int, int]] = {}
        self.deliveries: dict[str, dict[str, int]] = {}
        self.texts: dict[str, str] = {}  # psid -> the last text it was sent (the first 10,000)
        self.bodies: dict[str, bytes] = {}  # psid -> the last Send API body it got, as sent
        # "code/subcode" -> psid -> answers: what the restriction and window knobs refused
        self.refused: dict[str, dict[str, int]] = {}

    def tick(self, page_id: str, second: int) -> int:
        """Count one request to `page_id` in wall-clock `second`; return that second's count."""
        self.requests += 1
        seconds = self.per_second.get(page_id)
        if seconds is None:
            seconds = self.per_second[page_id] = {}
        count = seconds.get(second)
        if count is None:
            count = 1
            _forget_before(seconds, second - WINDOW_SECONDS)
        else:
            count += 1
        seconds[second] = count
        if count > self.max_per_second.get(page_id, 0):
            self.max_per_second[page_id] = count
        return count

    def answered(self, code: int) -> None:
        """Count one answer by Graph code (200 for a success)."""
        self.by_code[code] = self.by_code.get(code, 0) + 1

    def deliver(self, page_id: str, psid: str) -> None:
        """Count one successful send of a message to `psid` on `page_id`."""
        self.delivered += 1
        self.by_code[200] = self.by_code.get(200, 0) + 1
        psids = self.deliveries.get(page_id)
        if psids is None:
            psids = self.deliveries[page_id] = {}
        count = psids.get(psid, 0) + 1
        psids[psid] = count
        if count == 1:
            self.unique += 1
        elif count == 2 and len(self.duplicate_ids) < MAX_DUPLICATE_IDS:
            self.duplicate_ids.append(psid)

    def refuse(self, kind: str, psid: str) -> None:
        """Count one refusal of `kind` ("10/2018278", ...) to `psid` (per-recipient attempts)."""
        psids = self.refused.get(kind)
        if psids is None:
            psids = self.refused[kind] = {}
        psids[psid] = psids.get(psid, 0) + 1

    def remember_text(self, psid: str, text: str) -> None:
        """Keep what a recipient was sent (for tests of personalisation); bounded."""
        if psid in self.texts or len(self.texts) < MAX_TEXTS:
            self.texts[psid] = text

    def remember_body(self, psid: str, body: bytes) -> None:
        """Keep the whole body a recipient was sent (rich messages, tags); bounded like texts.
        Kept as bytes: parsing waits for a test to ask."""
        if psid in self.bodies or len(self.bodies) < MAX_TEXTS:
            self.bodies[psid] = body

    def sent_bodies(self) -> dict[str, object]:
        """The `GET /_fake/bodies` answer: psid -> body as JSON, the access token left out."""
        out: dict[str, object] = {}
        for psid, body in self.bodies.items():
            parsed = msgspec.json.decode(body)
            if isinstance(parsed, dict):
                parsed.pop("access_token", None)
            out[psid] = parsed
        return out

    def snapshot(self, now_second: int) -> dict[str, object]:
        """The `GET /_fake/stats` answer."""
        cutoff = now_second - WINDOW_SECONDS
        for seconds in self.per_second.values():
            _forget_before(seconds, cutoff)
        return {
            "requests": self.requests,
            "delivered": self.delivered,
            "unique": self.unique,
            "duplicates": self.delivered - self.unique,
            "duplicate_ids": list(self.duplicate_ids),
            "by_code": {str(code): n for code, n in sorted(self.by_code.items())},
            "max_per_second": dict(self.max_per_second),
            "per_second": {
                page: {str(second): n for second, n in seconds.items()}
                for page, seconds in self.per_second.items()
            },
        }


def _forget_before(seconds: dict[int, int], cutoff: int) -> None:
    """Drop seconds <= `cutoff`. Seconds are inserted in time order, so oldest come first."""
    while seconds:
        first = next(iter(seconds))
        if first > cutoff:
            return
        del seconds[first]
