"""WhatsApp webhook batches (``POST /webhooks/whatsapp``, kept in the same per-shard inbox as
Messenger's with ``c=whatsapp`` on the entry), applied by the consumers' events engine
(services/consumer/events.py hands each such entry here). Every event is idempotent and
order-free, because Meta retries and reorders:

  statuses[] delivered / read   flip the job's delivered / read bits, found by the job +
                                position in ``biz_opaque_callback_data`` (read implies
                                delivered; wa_status.lua)
  statuses[] failed             the error in the job's errors stream and its ``undelivered``
                                count (the send itself stays sent); the code read with the
                                send answers' table (shared/providers/whatsapp.py): 131026 /
                                131050 suppress the person on the number's list, 131048 / 368
                                pause the number's jobs, as when the send itself answers them
                                (Meta reports most of these only here, after accepting the send)
  messages[].from               opens the person's 24-hour service window with the number
                                (shared.window.touch, newest wins)
  errors[] (of the number)      logged: a system-, app- or account-level problem
  phone_number_quality_update   DOWNGRADE or FLAGGED: every job of the number paused fleet-wide
                                with the reason, new jobs refused until a user resumes one (the
                                same path as Messenger's policy-enforcement block)

Parsing: shared/providers/whatsapp_webhooks.py.
"""

from __future__ import annotations

import logging
import time

from redis.asyncio import Redis

from services.consumer.ledger import ERRORS_CAP
from shared import audit, control, keys, metrics, suppressions, webhooks, window
from shared.providers import whatsapp
from shared.providers import whatsapp_webhooks as wa
from shared.scripts import Scripts

log = logging.getLogger("fanout.consumer")

_REASON_MAX = 300
_KNOWN_DISPLAYS_MAX = 10_000  # display numbers this process already wrote to the shared map
_RECEIPTS = {
    "delivered": metrics.RECEIPTS.labels("delivered"),
    "read": metrics.RECEIPTS.labels("read"),
}


def digits(text: str) -> str:
    """A display number as digits only ("+1 555-0100" and "15550100" are one number)."""
    return "".join(ch for ch in text if ch.isdigit())


class WhatsAppEvents:
    def __init__(self, redis: Redis, scripts: Scripts) -> None:
        self.redis = redis
        self.scripts = scripts
        self._displays: dict[str, str] = {}

    async def apply(self, body: bytes) -> None:
        """One POST's events (raises msgspec errors for a body that is not Meta's JSON)."""
        found = wa.read(wa.notification_decoder.decode(body))
        await self._learn(found.numbers)
        for touch in found.touches:
            metrics.WEBHOOK_EVENTS.labels("whatsapp_messages").inc()
            await window.touch(self.redis, touch.number, touch.person, touch.ts_ms)
        for receipt in found.receipts:
            metrics.WEBHOOK_EVENTS.labels(f"whatsapp_{receipt.status}").inc()
            await self._status(receipt)
        for problem in found.problems:
            metrics.WEBHOOK_EVENTS.labels("whatsapp_errors").inc()
            log.error(
                "WhatsApp reported a problem with the number or the app",
                extra={"number": problem.number, "code": problem.code, "detail": problem.detail},
            )
        for quality in found.quality:
            metrics.WEBHOOK_EVENTS.labels("phone_number_quality_update").inc()
            await self._quality(quality)

    async def _learn(self, numbers: dict[str, str]) -> None:
        """Keep display -> phone_number_id (quality events name only the display number)."""
        fresh = {
            digits(display): number
            for display, number in numbers.items()
            if self._displays.get(digits(display)) != number
        }
        if not fresh:
            return
        await self.redis.hset(keys.wa_displays(), items=[x for pair in fresh.items() for x in pair])
        if len(self._displays) > _KNOWN_DISPLAYS_MAX:
            self._displays.clear()
        self._displays.update(fresh)

    async def _status(self, receipt: wa.Receipt) -> None:
        if receipt.status == "sent":
            return  # nothing to count: the send's answer already said it was accepted
        ours = webhooks.parse_metadata(receipt.callback)
        if ours is None:  # another app's send on the same number
            return
        job_id, position = ours
        k = keys.JobKeys.of(job_id)
        delivered, read, undelivered, failed = await self.scripts.wa_status(
            keys=[k.hash, k.delivered, k.read, k.undelivered, k.errors, k.series],
            args=[
                receipt.status,
                receipt.number,
                position,
                receipt.recipient,
                receipt.code,
                receipt.detail,
                ERRORS_CAP,
                receipt.billable,
            ],
        )
        if delivered:
            _RECEIPTS["delivered"].inc(delivered)
        if read:
            _RECEIPTS["read"].inc(read)
        if failed:
            log.info(
                "WhatsApp reported a send undelivered",
                extra={"job_id": job_id, "position": position, "code": receipt.code},
            )
            await self._failed(receipt)

    async def _failed(self, receipt: wa.Receipt) -> None:
        """Act on a failed status's code once (its first arrival), as on the same answer."""
        if not receipt.code.isdigit():
            return
        decision = whatsapp.decide(int(receipt.code), receipt.detail)
        if decision.suppress and receipt.recipient:
            at_ms = receipt.ts_s * 1000 or int(time.time() * 1000)
            await suppressions.add(
                self.redis, receipt.number, [receipt.recipient], receipt.code, at_ms
            )
        elif decision.verdict == "restricted":
            reason = f"page_restricted: Meta reported {receipt.detail}"[:_REASON_MAX]
            paused = await control.pause_page(self.scripts, receipt.number, reason)
            log.error(
                "WhatsApp restricted the number: its jobs are paused",
                extra={"number": receipt.number, "code": receipt.code, "jobs": len(paused)},
            )

    async def _quality(self, quality: wa.Quality) -> None:
        if quality.event not in wa.PAUSING_EVENTS:
            # UPGRADE, UNFLAGGED, THROUGHPUT_UPGRADE...: nothing to stop; resuming is a user's call.
            log.info(
                "WhatsApp number quality update",
                extra={"display": quality.display, "event": quality.event},
            )
            return
        raw = await self.redis.hget(keys.wa_displays(), digits(quality.display))
        if raw is None:
            log.error(
                "WhatsApp quality event for a number no webhook has named yet: nothing paused",
                extra={"display": quality.display, "event": quality.event},
            )
            return
        number = raw.decode() if isinstance(raw, bytes) else str(raw)
        what = "flagged the quality of" if quality.event == "FLAGGED" else "downgraded"
        limit = f" (messaging limit now {quality.current_limit})" if quality.current_limit else ""
        reason = f"number_quality: Meta {what} WhatsApp number {number}{limit}"[:_REASON_MAX]
        paused = await control.pause_page(self.scripts, number, reason)
        log.error(
            "WhatsApp number quality dropped: its jobs are paused",
            extra={"number": number, "event": quality.event, "jobs": len(paused)},
        )
        audit.action("number quality dropped", "meta", "paused", page_id=number, jobs=len(paused))
