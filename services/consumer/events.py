"""Webhook events: the third kind of stream work (beside chunks and callbacks), plugged into
the stream engine on each shard's inbox (group ``events``).

One entry is one POST from Meta as received (services/producer/webhooks.py). Its events are
applied in the order of their ``timestamp`` (Meta does not promise arrival order), each
idempotently, so an entry handled twice (a retry by Meta, a reclaim) changes nothing:

  messages, postbacks, reactions,    the person's last interaction (shared.window.touch,
  referrals, optins                  newest wins)
  message_echoes with our metadata   a receipt record (services/consumer/receipts.py)
  message_deliveries, message_reads  watermarks flip delivered / read bits
  messaging_policy_enforcement       "block": every job of the page paused fleet-wide with
                                     Meta's reason, new jobs 409 (the 10/1893063 path)

An entry marked ``c=whatsapp`` holds a WhatsApp Cloud API batch: services/consumer/wa_events.py
applies it (statuses, inbound messages, quality changes), with the same guarantees.

Only then is the entry acknowledged and deleted. A body that is not Meta's JSON cannot have
passed the receiver; should one appear, it is logged and dropped, never retried forever.
"""

from __future__ import annotations

import logging

import msgspec
from redis.asyncio import Redis

from services.consumer.engine import HAND_BACK_IDLE_MS, Engine, Entry
from services.consumer.receipts import Receipts
from services.consumer.wa_events import WhatsAppEvents
from shared import audit, control, keys, metrics, webhooks, window
from shared.providers.whatsapp_webhooks import CHANNEL
from shared.scripts import Scripts

log = logging.getLogger("fanout.consumer")

MAX_IN_FLIGHT = 32  # inbox entries handled at once per consumer
_REASON_MAX = 300
_WHATSAPP = CHANNEL.encode()  # the entry's channel field (absent: Messenger)


class InboxEvents:
    """The ``Kind`` of the stream engine for webhook batches."""

    name = "events"
    group = keys.INBOX_GROUP

    def __init__(
        self, redis: Redis, scripts: Scripts, shards: int, keep_s: int, max_deliveries: int = 5
    ) -> None:
        self.redis = redis
        self.max_deliveries = max_deliveries
        self.scripts = scripts
        self.streams = [keys.inbox(shard) for shard in range(shards)]
        self.receipts = Receipts(redis, scripts, keep_s)
        self.whatsapp = WhatsAppEvents(redis, scripts)
        self.engine: Engine | None = None  # set by whoever builds the engine around us

    def room(self, held: int) -> int:
        return MAX_IN_FLIGHT - held

    async def handle(self, entry: Entry) -> None:
        body = entry.fields.get(b"b", b"")
        if entry.deliveries > self.max_deliveries:
            # Failed that often (each try left it for reclaim): drop it rather than loop.
            log.error(
                "webhook batch given up",
                extra={"entry": entry.entry_id.decode(), "deliveries": entry.deliveries},
            )
            await self.scripts.settle(keys=[entry.stream], args=[self.group, entry.entry_id])
            return
        try:
            if entry.fields.get(b"c") == _WHATSAPP:
                await self.whatsapp.apply(body)
            else:
                await self._messenger(webhooks.notification_decoder.decode(body))
        except msgspec.MsgspecError as exc:
            log.error("inbox entry is not Meta's JSON; dropped", extra={"error": str(exc)})
        await self.scripts.settle(keys=[entry.stream], args=[self.group, entry.entry_id])

    async def _messenger(self, notification: webhooks.Notification) -> None:
        events = [m for e in notification.entry for m in e.messaging]
        events.sort(key=lambda m: m.timestamp)
        for event in events:
            await self.apply(event)

    async def hand_back(self, entries: list[Entry]) -> None:
        if self.engine is not None and entries:
            await self.engine.lease(entries, HAND_BACK_IDLE_MS)

    def taken_over(self, entry: Entry) -> None:
        pass  # the engine logs it

    def deleted(self, stream: str, ids: list[bytes]) -> None:
        pass  # the engine logs it

    async def apply(self, event: webhooks.Messaging) -> None:
        field = event.field()
        metrics.WEBHOOK_EVENTS.labels(field).inc()
        if field in webhooks.OPENS_WINDOW:
            page_id, psid = event.recipient.id, event.sender.id
            if page_id and psid:
                await window.touch(self.redis, page_id, psid, event.timestamp)
        elif field == "message_echoes":
            await self._echo(event)
        elif field == "message_deliveries" and event.delivery is not None:
            await self.receipts.watermark(
                event.recipient.id, event.sender.id, "d", event.delivery.watermark
            )
        elif field == "message_reads" and event.read is not None:
            await self.receipts.watermark(
                event.recipient.id, event.sender.id, "r", event.read.watermark
            )
        elif field == "messaging_policy_enforcement":
            await self._enforcement(event)

    async def _echo(self, event: webhooks.Messaging) -> None:
        assert event.message is not None
        ours = webhooks.parse_metadata(event.message.metadata)
        if ours is None:  # a person answering from the page inbox, or another app
            return
        job_id, position = ours
        # An echo goes from the page (sender) to the person (recipient).
        await self.receipts.echo(
            event.sender.id, event.recipient.id, job_id, position, event.timestamp
        )

    async def _enforcement(self, event: webhooks.Messaging) -> None:
        enforcement = event.enforcement()
        assert enforcement is not None
        page_id = event.recipient.id
        action = enforcement.action.lower()
        if action != "block":
            # "warning" changes nothing yet, and "unblock" is a user's call (resume a job).
            log.warning("Meta policy enforcement", extra={"page_id": page_id, "action": action})
            return
        reason = f"page_restricted: Meta blocked the page ({enforcement.reason})"[:_REASON_MAX]
        paused = await control.pause_page(self.scripts, page_id, reason)
        log.error(
            "Meta blocked the page: its jobs are paused",
            extra={"page_id": page_id, "jobs": len(paused)},
        )
        audit.action("page restricted", "meta", "paused", page_id=page_id, jobs=len(paused))


def engine(
    redis: Redis,
    scripts: Scripts,
    consumer: str,
    *,
    shards: int,
    claim_idle_ms: int,
    block_ms: int,
    drain_s: float,
    keep_s: int,
    max_deliveries: int = 5,
) -> Engine:
    """The consumer's events engine: inbox streams of every shard, one group."""
    kind = InboxEvents(redis, scripts, shards, keep_s, max_deliveries)
    built = Engine(
        redis,
        scripts,
        kind,
        consumer,
        claim_idle_ms=claim_idle_ms,
        block_ms=block_ms,
        drain_s=drain_s,
    )
    kind.engine = built
    return built
