"""The Messenger Send API client: one connection pool per process (``shared.http1``).

The page token travels in the Authorization header, never in the URL, so no access log or
exception text can carry it; the request head holding it is framed once per job and kept
only in memory.
"""

from __future__ import annotations

import json
import time

import msgspec

from shared.http1 import HttpError, Pool
from shared.models import GraphAnswer, graph_answer_decoder

Head = tuple[bytes, bytes]


class SendResult(msgspec.Struct):
    """One POST's outcome: the HTTP status and parsed answer, or the transport failure."""

    status: int  # 0 when no HTTP answer arrived
    answer: GraphAnswer | None
    transport_error: str | None  # "timeout" | "connection" | "bad_answer"
    retry_after: float | None
    seconds: float
    # The request had gone out and no Graph verdict came back: the provider may have it.
    maybe_delivered: bool = False


def regain_access_s(header: bytes | None) -> float | None:
    """Seconds until access returns, from Meta's X-Business-Use-Case-Usage header:
    {"<business id>": [{"type": ..., "call_count": 95, "estimated_time_to_regain_access": 5}]}
    (the estimate is in minutes). None when absent, zero or unreadable."""
    if not header:
        return None
    try:
        usage = json.loads(header)
        minutes = max(
            (
                float(entry.get("estimated_time_to_regain_access") or 0)
                for entries in usage.values()
                for entry in entries
            ),
            default=0.0,
        )
    except (ValueError, AttributeError, TypeError):
        return None
    return minutes * 60 if minutes > 0 else None


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After as delay-seconds (the HTTP-date form is rare on APIs and ignored)."""
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


class MessengerClient:
    def __init__(
        self,
        graph_url: str,
        version: str,
        concurrency: int,
        timeout_s: float,
        proxy: str | None = None,
    ) -> None:
        self.pool = Pool(graph_url, concurrency, timeout_s, proxy)
        self.path = f"/{version}/me/messages"
        self.upload_path = f"/{version}/me/message_attachments"

    def head(self, token: str) -> Head:
        """The framed request head for one page's token."""
        return self.head_at(self.path, token)

    def head_at(self, path: str, token: str) -> Head:
        """The framed request head of a send endpoint (the provider's path) for one sender's
        token: both channels POST Graph JSON and answer in Graph's shapes."""
        return self.pool.frame_post(path, b"Authorization: Bearer " + token.encode() + b"\r\n")

    def upload_head(self, token: str) -> Head:
        """The framed request head of the Attachment Upload API for one page's token."""
        auth = b"Authorization: Bearer " + token.encode() + b"\r\n"
        return self.pool.frame_post(self.upload_path, auth)

    async def close(self) -> None:
        await self.pool.close()

    async def send(self, head: Head, body: bytes) -> SendResult:
        started = time.perf_counter()
        try:
            answer = await self.pool.post(head, body)
        except HttpError as exc:
            return SendResult(0, None, exc.kind, None, time.perf_counter() - started, exc.sent)
        seconds = time.perf_counter() - started
        retry_after_raw = answer.headers.get(b"retry-after")
        retry_after = parse_retry_after(retry_after_raw.decode() if retry_after_raw else None)
        regain = regain_access_s(answer.headers.get(b"x-business-use-case-usage"))
        if regain is not None:
            retry_after = max(retry_after or 0.0, regain)
        # Only Graph's own error says the message was not sent; any other failure (a proxy's
        # HTML 502, a body that is not Graph's JSON) may come after the provider acted on it.
        try:
            graph: GraphAnswer = graph_answer_decoder.decode(answer.body)
        except msgspec.MsgspecError:
            return SendResult(answer.status, None, "bad_answer", retry_after, seconds, True)
        unexplained = graph.error is None and not 200 <= answer.status < 300
        return SendResult(answer.status, graph, None, retry_after, seconds, unexplained)
