"""The Messenger Send API client: one pooled aiohttp session per process.

aiohttp rather than httpx's default transport: against the same local sink, 20,000 POSTs at
64 in flight, aiohttp sustains many times the rate (bench/http_clients.py), and the provider
client is the consumer's hot path. The page token travels in the Authorization header, never
in the URL, so no access log or exception text can carry it.
"""

from __future__ import annotations

import time

import aiohttp
import msgspec

from shared.models import GraphAnswer, graph_answer_decoder

# Meta's answers are small; a bigger body is not an answer we can trust.
_MAX_ANSWER = 64 * 1024


class SendResult(msgspec.Struct):
    """One POST's outcome: the HTTP status and parsed answer, or the transport failure."""

    status: int  # 0 when no HTTP answer arrived
    answer: GraphAnswer | None
    transport_error: str | None  # "timeout" | "connection" | "bad_answer"
    retry_after: float | None
    seconds: float


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After as delay-seconds (the HTTP-date form is rare on APIs and ignored)."""
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


class MessengerClient:
    def __init__(self, graph_url: str, version: str, concurrency: int, timeout_s: float) -> None:
        self.url = f"{graph_url}/{version}/me/messages"
        self._concurrency = concurrency
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=self._concurrency, limit_per_host=0, keepalive_timeout=30
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeout,
            skip_auto_headers=("User-Agent",),
            headers={"Content-Type": "application/json", "User-Agent": "fanout/0.1"},
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def send(self, token: str, body: bytes) -> SendResult:
        assert self._session is not None, "start() first"
        headers = {"Authorization": f"Bearer {token}"}
        started = time.perf_counter()
        try:
            async with self._session.post(self.url, data=body, headers=headers) as response:
                raw = await response.content.read(_MAX_ANSWER)
                status = response.status
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
        except TimeoutError:
            return SendResult(0, None, "timeout", None, time.perf_counter() - started)
        except aiohttp.ClientError:
            return SendResult(0, None, "connection", None, time.perf_counter() - started)
        seconds = time.perf_counter() - started
        try:
            answer: GraphAnswer = graph_answer_decoder.decode(raw)
        except msgspec.MsgspecError:
            return SendResult(status, None, "bad_answer", retry_after, seconds)
        return SendResult(status, answer, None, retry_after, seconds)
