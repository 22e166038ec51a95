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

WhatsApp (``wa_url``, e.g. http://127.0.0.1:8080/webhooks/whatsapp): after each accepted
send, ``statuses`` for its ``wamid`` with the send's ``biz_opaque_callback_data`` echoed:
``sent``, then ``delivered`` and ``read`` for people chosen the same way, ``failed`` (131026)
for a ``wa_failed_rate`` share of people instead, a ``read`` with no ``delivered`` for a
``wa_implied_rate`` share of readers (Meta: "the 'delivered' webhook is not sent because it's
implied"), receipts before their ``sent`` at ``reorder_rate``, POSTs twice at
``duplicate_rate``; inbound ``messages[].from`` (the window opens) and
``phone_number_quality_update`` on demand. Payloads as Meta documents them:
https://developers.facebook.com/documentation/business-messaging/whatsapp/webhooks/reference/messages/status/
https://developers.facebook.com/documentation/business-messaging/whatsapp/webhooks/reference/messages
https://developers.facebook.com/documentation/business-messaging/whatsapp/webhooks/reference/phone_number_quality_update
(``object`` "whatsapp_business_account", ``entry[].changes[].value`` with ``metadata``
naming the number, signed like Messenger's). ``GET /_fake/receipts`` adds ``wa_sent``,
``wa_delivered`` (delivered or read), ``wa_read`` and ``wa_failed``: messages whose status
Meta's receiver took.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
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
_WA_STATUSES = ("sent", "delivered", "read", "failed")
# Meta's title and details of the status a failed message gets (error-codes page):
# https://developers.facebook.com/documentation/business-messaging/whatsapp/support/error-codes
_WA_FAILED_ERROR = {
    "code": 131026,
    "title": "Message undeliverable",
    "message": "Message undeliverable",
    "error_data": {"details": "Message Undeliverable."},
}


class WebhookConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    echo_delay_ms: float = 20.0
    delivery_delay_ms: float = 150.0
    read_delay_ms: float = 400.0
    delivered_rate: float = 0.9  # share of PSIDs whose messages get a delivery watermark
    read_rate: float = 0.5  # share of PSIDs (among the delivered) who read
    duplicate_rate: float = 0.1  # POSTs sent twice
    reorder_rate: float = 0.1  # messages whose delivery comes before their echo
    seed: int = 0
    wa_failed_rate: float = 0.05  # WhatsApp: share of people whose accepted message fails
    wa_implied_rate: float = 0.2  # WhatsApp: share of readers with no "delivered" status


class Inbound(msgspec.Struct, forbid_unknown_fields=True):
    page_id: str
    psids: list[str]
    text: str = "hi"


class Enforcement(msgspec.Struct, forbid_unknown_fields=True):
    page_id: str
    action: str = "block"
    reason: str = "The bot violated our Platform Policies."


class WaInbound(msgspec.Struct, forbid_unknown_fields=True):
    """``POST /_fake/wa_inbound``: people write to the number (their window opens)."""

    phone_number_id: str
    people: list[str]
    text: str = "hi"


class WaQuality(msgspec.Struct, forbid_unknown_fields=True):
    """``POST /_fake/wa_quality``: Meta changes the number's quality or limit."""

    phone_number_id: str
    event: str = "DOWNGRADE"  # FLAGGED, UNFLAGGED, UPGRADE, DOWNGRADE
    current_limit: str = "TIER_250"


def display_number(phone_number_id: str) -> str:
    """The fake's display number of a phone_number_id (Meta's quality events name a number by
    it only): a US test number from the id's last 7 digits."""
    return "1555" + phone_number_id[-7:].rjust(7, "0")


def waba_of(phone_number_id: str) -> str:
    """The fake WhatsApp Business Account id that owns a number."""
    return "9" + phone_number_id[-14:]


class Emitter:
    def __init__(
        self,
        url: str,
        secret: str,
        config: WebhookConfig | None = None,
        wa_url: str | None = None,
    ) -> None:
        self.url = url
        self.wa_url = wa_url
        self._secret = secret
        self.config = config or WebhookConfig()
        self._rng = random.Random(self.config.seed)
        self._queue: list[_Queued] = []
        self._wa_queue: list[_Queued] = []  # number, value part, kind, wamid
        self._waiting = 0  # events scheduled, not yet due
        self._posting = 0  # events in the POST under way
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._client: httpx.AsyncClient | None = None
        self._replays: set[asyncio.Task[None]] = set()
        self.reported = {"echoes": 0, "posts": 0, "duplicates": 0, "refused": 0}
        self.delivered_mids: set[str] = set()
        self.read_mids: set[str] = set()
        self.posted: list[tuple[str, bytes]] = []  # every URL and body taken, for a replay
        self.wa_reported: dict[str, set[str]] = {kind: set() for kind in _WA_STATUSES}

    def configure(self, body: bytes) -> None:
        """Apply a JSON subset of WebhookConfig (raises msgspec errors, then changes nothing)."""
        patch = msgspec.json.decode(body or b"{}", type=dict[str, Any])
        self.config = msgspec.convert(msgspec.structs.asdict(self.config) | patch, WebhookConfig)

    # --- what happens ---------------------------------------------------------------------

    def sent(self, page: str, psid: str, mid: str, metadata: str | None) -> None:
        """A send was delivered: its echo, then its receipts, on their way."""
        if not self.url:
            return  # only WhatsApp's webhooks are played
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

    # --- WhatsApp ------------------------------------------------------------------------

    def wa_sent(self, number: str, to: str, wamid: str, callback: str | None) -> None:
        """A WhatsApp send was accepted: its statuses on their way (with ``wa_url``)."""
        if self.wa_url is None:
            return
        now_s = int(time.time())
        c = self.config

        def status(name: str, seconds: int, **extra: Any) -> dict[str, Any]:
            event: dict[str, Any] = {
                "id": wamid,
                "status": name,
                "timestamp": str(seconds),
                "recipient_id": to,
                **extra,
            }
            if callback is not None:
                event["biz_opaque_callback_data"] = callback
            return event

        pricing = {"billable": True, "pricing_model": "PMP", "category": "utility"}
        receipt_at = c.delivery_delay_ms
        if self._rng.random() < c.reorder_rate:
            receipt_at = c.echo_delay_ms / 2  # the receipt overtakes "sent"
        self._wa_later(c.echo_delay_ms, number, status("sent", now_s, pricing=pricing), wamid)
        if self._wa_chosen(to, c.wa_failed_rate, 2):
            failed = status("failed", now_s + 1, errors=[_WA_FAILED_ERROR])
            self._wa_later(receipt_at, number, failed, wamid)
            return
        if not self._wa_chosen(to, c.delivered_rate, 0):
            return
        reads = self._wa_chosen(to, c.read_rate, 1)
        if not (reads and self._wa_chosen(to, c.wa_implied_rate, 3)):
            self._wa_later(receipt_at, number, status("delivered", now_s + 1), wamid)
        if reads:
            # Reordered: the read comes with the delivery, both before "sent".
            read_at = receipt_at if receipt_at < c.echo_delay_ms else c.read_delay_ms
            self._wa_later(read_at, number, status("read", now_s + 2), wamid)

    def wa_inbound(self, number: str, people: list[str], text: str) -> int:
        """People write to the number: ``messages`` webhooks (each opens their window)."""
        now_s = int(time.time())
        for i, person in enumerate(people):
            message = {
                "from": person,
                "id": f"wamid.in{now_s}{i}",
                "timestamp": str(now_s),
                "type": "text",
                "text": {"body": text},
            }
            self._wa_queue.append((number, message, "inbound", ""))
        self._kick()
        return len(people)

    def wa_quality(self, number: str, event: str, current_limit: str) -> None:
        value = {
            "display_phone_number": display_number(number),
            "event": event,
            "current_limit": current_limit,
        }
        self._wa_queue.append((number, value, "quality", ""))
        self._kick()

    def _wa_later(self, delay_ms: float, number: str, event: dict[str, Any], wamid: str) -> None:
        self._waiting += 1

        def due() -> None:
            self._waiting -= 1
            self._wa_queue.append((number, event, str(event["status"]), wamid))
            self._kick()

        asyncio.get_running_loop().call_later(delay_ms / 1000, due)

    def replay(self) -> int:
        """POST every body taken so far once more, newest first (Meta retries and reorders)."""
        bodies = self.posted[::-1]
        self.posted = []

        async def again() -> None:
            for url, body in bodies:
                await self._deliver(body, url)

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
            # events not yet due, waiting to be posted, or being posted (0: all settled)
            "queued": len(self._queue)
            + len(self._wa_queue)
            + len(self._replays)
            + self._waiting
            + self._posting,
            "wa_sent": len(self.wa_reported["sent"]),
            "wa_delivered": len(self.wa_reported["delivered"] | self.wa_reported["read"]),
            "wa_read": len(self.wa_reported["read"]),
            "wa_failed": len(self.wa_reported["failed"]),
        }

    # --- sending --------------------------------------------------------------------------

    def _chosen(self, psid: str, rate: float, salt: int) -> bool:
        return zlib.crc32(f"{salt}:{psid}".encode()) < rate * _HASH_SPACE

    @staticmethod
    def _wa_chosen(person: str, rate: float, salt: int) -> bool:
        """Fixed per person, like ``_chosen``, but independent across salts (crc32 is linear:
        its draws for one person under two salts differ by a constant)."""
        digest = hashlib.blake2b(f"{salt}:{person}".encode(), digest_size=4).digest()
        return int.from_bytes(digest, "big") < rate * _HASH_SPACE

    def _later(
        self, delay_ms: float, page: str, event: dict[str, Any], kind: str, mid: str
    ) -> None:
        loop = asyncio.get_running_loop()

        self._waiting += 1

        def due() -> None:
            self._waiting -= 1
            self._queue.append((page, event, kind, mid))
            self._kick()

        loop.call_later(delay_ms / 1000, due)

    async def close(self) -> None:
        """Stop posting: the flush task ends and the client closes (what is queued is dropped)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None

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
            while self._queue or self._wa_queue:
                size = self._rng.randint(1, _BATCH_MAX)
                if self._queue:
                    batch, self._queue = self._queue[:size], self._queue[size:]
                    self._posting = len(batch)
                    await self._post(batch)
                if self._wa_queue:
                    batch, self._wa_queue = self._wa_queue[:size], self._wa_queue[size:]
                    self._posting = len(batch)
                    await self._post_wa(batch)
                self._posting = 0

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

    async def _post_wa(self, batch: list[_Queued]) -> None:
        """One POST as Meta batches WhatsApp's: an entry per business account, a change per
        number and field, statuses (or messages) in the order they became due."""
        assert self.wa_url is not None
        changes: dict[tuple[str, str], dict[str, Any]] = {}
        for number, part, kind, _ in batch:
            group = kind if kind in ("quality", "inbound") else "status"
            change = changes.get((number, group))
            if change is None:
                field = "phone_number_quality_update" if group == "quality" else "messages"
                change = {"field": field, "value": _wa_value(number, group)}
                changes[(number, group)] = change
            value = change["value"]
            if group == "quality":
                value.update(part)
            elif group == "inbound":
                value["contacts"].append({"profile": {"name": "Fake"}, "wa_id": part["from"]})
                value["messages"].append(part)
            else:
                value["statuses"].append(part)
        entries: dict[str, list[dict[str, Any]]] = {}
        for (number, _), change in changes.items():
            entries.setdefault(waba_of(number), []).append(change)
        payload = {
            "object": "whatsapp_business_account",
            "entry": [{"id": waba, "changes": found} for waba, found in entries.items()],
        }
        body = json.dumps(payload, separators=(",", ":")).encode()
        times = 2 if self._rng.random() < self.config.duplicate_rate else 1
        for _ in range(times):
            if not await self._deliver(body, self.wa_url):
                return
        self.reported["duplicates"] += times - 1
        for _, _, kind, wamid in batch:  # reported: Meta's receiver said 200
            if kind in self.wa_reported:
                self.wa_reported[kind].add(wamid)

    async def _deliver(self, body: bytes, url: str | None = None) -> bool:
        assert self._client is not None
        url = url or self.url
        headers = {
            "Content-Type": "application/json",
            webhooks.SIGNATURE_HEADER: webhooks.sign(self._secret, body),
        }
        delay = 0.05
        for _ in range(_RETRIES):
            try:
                response = await self._client.post(url, content=body, headers=headers)
                self.reported["posts"] += 1
                if response.status_code == 200:
                    self.posted.append((url, body))
                    return True
                self.reported["refused"] += 1
            except httpx.HTTPError as exc:
                log.warning("webhook POST failed: %s", exc)
            await asyncio.sleep(delay)  # Meta "will immediately try a few more times"
            delay *= 2
        return False


def _wa_value(number: str, kind: str) -> dict[str, Any]:
    """The ``value`` of one change: a quality event's own fields, or a messages change naming
    the number in ``metadata``."""
    if kind == "quality":
        return {}
    value: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": display_number(number), "phone_number_id": number},
    }
    if kind == "inbound":
        value["contacts"] = []
        value["messages"] = []
    else:
        value["statuses"] = []
    return value
