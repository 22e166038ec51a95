"""fakegraph plays Meta's side of the webhooks: after each delivered send it POSTs, signed as
Meta signs them, the message's echo (with the send's ``metadata``), then a delivery watermark
and a read watermark after configurable delays, some batches twice and some receipts before
their echo (Meta retries and does not promise order). It also sends what people do on demand:
inbound messages (the window opens) and policy enforcement.

Payloads and headers as Meta documents them:
https://developers.facebook.com/documentation/business-messaging/messenger-platform/webhooks
(``X-Hub-Signature-256`` over the escaped-unicode JSON, batched entries) and
https://developers.facebook.com/documentation/business-messaging/messenger-platform/webhooks/webhook-events
(``message`` with ``is_echo`` and ``metadata``, ``delivery.watermark``/``mids``,
``read.watermark``, ``policy-enforcement``).

Who gets a delivery and a read is fixed per PSID (crc32, like ``blocked_rate``), so a test
knows; ``GET /_fake/receipts`` says what was reported: messages covered by a delivery and by
a read, echoes, POSTs and their answers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
import zlib
from typing import Any

import httpx
import msgspec

from shared import webhooks

log = logging.getLogger("fanout.fakegraph")

_HASH_SPACE = 2**32
_BATCH_MAX = 10  # Meta batches up to 10 events... per POST, as we read it; 1..10 here
_RETRIES = 5


_Queued = tuple[str, dict[str, Any], str, str]  # page, messaging event, kind, mid


class WebhookConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    echo_delay_ms: float = 20.0
    delivery_delay_ms: float = 150.0
    read_delay_ms: float = 400.0
    delivered_rate: float = 0.9  # share of PSIDs whose messages get a delivery watermark
    read_rate: float = 0.5  # share of PSIDs (among the delivered) who read
    duplicate_rate: float = 0.1  # POSTs sent twice
    reorder_rate: float = 0.1  # messages whose delivery comes before their echo
    seed: int = 0


class Inbound(msgspec.Struct, forbid_unknown_fields=True):
    page_id: str
    psids: list[str]
    text: str = "hi"


class Enforcement(msgspec.Struct, forbid_unknown_fields=True):
    page_id: str
    action: str = "block"
    reason: str = "The bot violated our Platform Policies."


class Emitter:
    def __init__(self, url: str, secret: str, config: WebhookConfig | None = None) -> None:
        self.url = url
        self._secret = secret
        self.config = config or WebhookConfig()
        self._rng = random.Random(self.config.seed)
        self._queue: list[_Queued] = []
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._client: httpx.AsyncClient | None = None
        self._replays: set[asyncio.Task[None]] = set()
        self.reported = {"echoes": 0, "posts": 0, "duplicates": 0, "refused": 0}
        self.delivered_mids: set[str] = set()
        self.read_mids: set[str] = set()
        self.posted: list[bytes] = []  # every body Meta's receiver took, for a replay

    def configure(self, body: bytes) -> None:
        """Apply a JSON subset of WebhookConfig (raises msgspec errors, then changes nothing)."""
        patch = msgspec.json.decode(body or b"{}", type=dict[str, Any])
        self.config = msgspec.convert(msgspec.structs.asdict(self.config) | patch, WebhookConfig)

    # --- what happens ---------------------------------------------------------------------

    def sent(self, page: str, psid: str, mid: str, metadata: str | None) -> None:
        """A send was delivered: its echo, then its receipts, on their way."""
        now_ms = int(time.time() * 1000)
        c = self.config
        echo: dict[str, Any] = {
            "sender": {"id": page},
            "recipient": {"id": psid},
            "timestamp": now_ms,
            "message": {"mid": mid, "is_echo": True, "app_id": 1, "text": "…"},
        }
        if metadata is not None:
            echo["message"]["metadata"] = metadata
        delivery_at = c.delivery_delay_ms
        if self._rng.random() < c.reorder_rate:
            delivery_at = c.echo_delay_ms / 2  # the receipt overtakes the echo
        self._later(c.echo_delay_ms, page, echo, "echo", mid)
        if not self._chosen(psid, c.delivered_rate, 0):
            return
        delivery = {
            "sender": {"id": psid},
            "recipient": {"id": page},
            "timestamp": now_ms + int(c.delivery_delay_ms),
            "delivery": {"mids": [mid], "watermark": now_ms + 1},
        }
        self._later(delivery_at, page, delivery, "delivery", mid)
        if not self._chosen(psid, c.read_rate, 1):
            return
        read = {
            "sender": {"id": psid},
            "recipient": {"id": page},
            "timestamp": now_ms + int(c.read_delay_ms),
            "read": {"watermark": now_ms + 1},
        }
        self._later(c.read_delay_ms, page, read, "read", mid)

    def inbound(self, page: str, psids: list[str], text: str) -> int:
        """People message the page (each opens their window)."""
        now_ms = int(time.time() * 1000)
        for i, psid in enumerate(psids):
            event = {
                "sender": {"id": psid},
                "recipient": {"id": page},
                "timestamp": now_ms + i,
                "message": {"mid": f"m_in_{now_ms}_{i}", "text": text},
            }
            self._queue.append((page, event, "inbound", ""))
        self._kick()
        return len(psids)

    def enforcement(self, page: str, action: str, reason: str) -> None:
        event = {
            "recipient": {"id": page},
            "timestamp": int(time.time() * 1000),
            "policy-enforcement": {"action": action, "reason": reason},
        }
        self._queue.append((page, event, "enforcement", ""))
        self._kick()

    def replay(self) -> int:
        """POST every body taken so far once more, newest first (Meta retries and reorders)."""
        bodies = self.posted[::-1]
        self.posted = []

        async def again() -> None:
            for body in bodies:
                await self._deliver(body)

        self._kick()  # the client exists from here on
        task = asyncio.create_task(again())
        self._replays.add(task)
        task.add_done_callback(self._replays.discard)
        return len(bodies)

    def snapshot(self) -> dict[str, object]:
        return {
            **self.reported,
            "delivered": len(self.delivered_mids | self.read_mids),
            "read": len(self.read_mids),
            "queued": len(self._queue) + len(self._replays),
        }

    # --- sending --------------------------------------------------------------------------

    def _chosen(self, psid: str, rate: float, salt: int) -> bool:
        return zlib.crc32(f"{salt}:{psid}".encode()) < rate * _HASH_SPACE

    def _later(
        self, delay_ms: float, page: str, event: dict[str, Any], kind: str, mid: str
    ) -> None:
        loop = asyncio.get_running_loop()

        def due() -> None:
            self._queue.append((page, event, kind, mid))
            self._kick()

        loop.call_later(delay_ms / 1000, due)

    def _kick(self) -> None:
        if self._task is None:
            self._wake = asyncio.Event()
            self._client = httpx.AsyncClient(timeout=10.0)
            self._task = asyncio.create_task(self._flush_loop())
        assert self._wake is not None
        self._wake.set()

    async def _flush_loop(self) -> None:
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                size = self._rng.randint(1, _BATCH_MAX)
                batch, self._queue = self._queue[:size], self._queue[size:]
                await self._post(batch)

    async def _post(self, batch: list[_Queued]) -> None:
        entries: dict[str, list[dict[str, Any]]] = {}
        for page, event, _, _ in batch:
            entries.setdefault(page, []).append(event)
        now_ms = int(time.time() * 1000)
        payload = {
            "object": "page",
            "entry": [{"id": p, "time": now_ms, "messaging": ev} for p, ev in entries.items()],
        }
        # json.dumps escapes non-ASCII as \\uXXXX: the form Meta signs.
        body = json.dumps(payload, separators=(",", ":")).encode()
        times = 2 if self._rng.random() < self.config.duplicate_rate else 1
        for _ in range(times):
            if not await self._deliver(body):
                return
        self.reported["duplicates"] += times - 1
        for _, _, kind, mid in batch:  # reported: Meta's receiver said 200
            if kind == "echo":
                self.reported["echoes"] += 1
            elif kind == "delivery":
                self.delivered_mids.add(mid)
            elif kind == "read":
                self.read_mids.add(mid)

    async def _deliver(self, body: bytes) -> bool:
        assert self._client is not None
        headers = {
            "Content-Type": "application/json",
            webhooks.SIGNATURE_HEADER: webhooks.sign(self._secret, body),
        }
        delay = 0.05
        for _ in range(_RETRIES):
            try:
                response = await self._client.post(self.url, content=body, headers=headers)
                self.reported["posts"] += 1
                if response.status_code == 200:
                    self.posted.append(body)
                    return True
                self.reported["refused"] += 1
            except httpx.HTTPError as exc:
                log.warning("webhook POST failed: %s", exc)
            await asyncio.sleep(delay)  # Meta "will immediately try a few more times"
            delay *= 2
        return False
