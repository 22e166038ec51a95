"""A Messenger job's attachment by URL, uploaded once for the whole job.

Meta fetches a URL attachment for every message that carries it. Uploaded once through the
Attachment Upload API (``POST /{version}/me/message_attachments`` with ``is_reusable: true``,
https://developers.facebook.com/docs/messenger-platform/reference/attachment-upload-api),
every recipient is sent the ``attachment_id`` instead. One consumer of the fleet uploads,
however many hold chunks of the job (``upload_lease.lua``, every key in the job's slot):

    the id is in the job hash          -> send by it
    the job ended                      -> send nothing (its chunks end skipped)
    nobody holds the upload lease      -> take it and upload (a dead holder's lease lapses)
    another consumer holds it          -> ask again after a short wait that grows to 1 s

    upload answered attachment_id      -> stored in the job hash (first stored wins), lease freed
    transient (5xx, throttle, timeout) -> backoff, renew the lease, again (for up to 10 min)
    anything else (a 4xx)              -> the job fails, its reason naming the upload and
                                          Meta's code; no recipient is sent or failed

The page token travels only in the request head's Authorization header (shared/provider.py);
nothing here logs it, and the reason stored names the attachment's type, never its URL (a
signed URL is a credential of its own).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time

import msgspec

from shared import control, messages
from shared.classify import Decision, backoff
from shared.keys import JobKeys
from shared.models import Message
from shared.provider import Head, MessengerClient
from shared.providers.messenger import classify
from shared.scripts import Scripts
from shared.template import Template

log = logging.getLogger("fanout.consumer")

_UPLOADABLE = (
    messages.ImageAttachment,
    messages.VideoAttachment,
    messages.AudioAttachment,
    messages.FileAttachment,
)
_POLL_FIRST_S = 0.05
_POLL_CAP_S = 1.0
_RETRY_CAP_S = 10.0
_TRANSIENT_BUDGET_S = 600.0
_encode = msgspec.json.Encoder().encode


def upload_url(message: Message) -> str | None:
    """The URL to upload once for the job, or None: no media attachment by URL, or a URL that
    differs per recipient (it has placeholders)."""
    attachment = message.attachment
    if not isinstance(attachment, _UPLOADABLE) or attachment.payload.url is None:
        return None
    if Template.parse(attachment.payload.url).personal:
        return None
    return attachment.payload.url


def by_id(message: Message, attachment_id: str) -> Message:
    """The message with its attachment sent by ``attachment_id`` instead of its URL."""
    attachment = message.attachment
    assert isinstance(attachment, _UPLOADABLE)
    payload = messages.MediaPayload(attachment_id=attachment_id)
    return msgspec.structs.replace(
        message, attachment=msgspec.structs.replace(attachment, payload=payload)
    )


class Uploads:
    """Attachments of this consumer's jobs, resolved through the fleet's lease."""

    def __init__(
        self, scripts: Scripts, client: MessengerClient, consumer: str, request_timeout_s: float
    ) -> None:
        self.scripts = scripts
        self.client = client
        self.consumer = consumer
        # Long enough for one request and the backoff before the next; renewed before each.
        self.lease_ms = int((request_timeout_s + _RETRY_CAP_S + 5) * 1000)
        self._asks = itertools.count(1)

    async def prepare(self, k: JobKeys, token: str, message: Message) -> Message | None:
        """The message to send: by attachment_id when its URL was (or is now) uploaded, as it
        is when there is nothing to upload; None when the job ended or its upload failed."""
        url = upload_url(message)
        if url is None:
            return message
        # A token per ask, so two chunks of one job in this process coordinate as two
        # consumers would.
        owner = f"{self.consumer}:{next(self._asks)}"
        wait_s = _POLL_FIRST_S
        while True:
            state, value = await self._ask(k, owner)
            if state == "id":
                return by_id(message, value)
            if state == "ended":
                return None
            if state == "lease":
                attachment_id = await self._upload(k, owner, token, message)
                return None if attachment_id is None else by_id(message, attachment_id)
            await asyncio.sleep(min(wait_s, max(0.01, int(value) / 1000)))
            wait_s = min(wait_s * 2, _POLL_CAP_S)

    async def _ask(self, k: JobKeys, owner: str) -> tuple[str, str]:
        reply = await self.scripts.upload_lease(
            keys=[k.hash, k.upload], args=[owner, self.lease_ms]
        )
        state, value = (v.decode() if isinstance(v, bytes) else str(v) for v in reply)
        return state, value

    async def _upload(self, k: JobKeys, owner: str, token: str, message: Message) -> str | None:
        """Upload while holding the lease; the attachment id everyone sends by, or None."""
        attachment = message.attachment
        assert isinstance(attachment, _UPLOADABLE)
        kind = str(type(attachment).__struct_config__.tag)
        body = _encode(
            {
                "message": {
                    "attachment": {
                        "type": kind,
                        "payload": {"url": attachment.payload.url, "is_reusable": True},
                    }
                }
            }
        )
        head: Head = self.client.upload_head(token)
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            result = await self.client.send(head, body)
            decision = classify(result)
            answer = result.answer
            if decision.verdict == "sent" and answer is not None and answer.attachment_id:
                stored = await self.scripts.upload_done(
                    keys=[k.hash, k.upload], args=[owner, answer.attachment_id]
                )
                log.info(
                    "attachment uploaded",
                    extra={"job_id": k.job_id, "type": kind, "attempts": attempt},
                )
                return stored.decode() if isinstance(stored, bytes) else None
            transient = decision.verdict in ("retry", "throttled")
            if not transient or time.monotonic() - started > _TRANSIENT_BUDGET_S:
                await self._fail(k, kind, decision, attempt)
                return None
            delay = backoff(attempt, cap=_RETRY_CAP_S, retry_after=decision.retry_after)
            log.warning(
                "attachment upload failed; retrying",
                extra={"job_id": k.job_id, "code": decision.code, "retry_in_s": round(delay, 2)},
            )
            await asyncio.sleep(delay)
            state, _ = await self._ask(k, owner)  # renew the lease; or the job ended meanwhile
            if state != "lease":
                return None

    async def _fail(self, k: JobKeys, kind: str, decision: Decision, attempts: int) -> None:
        code = decision.code + (f"/{decision.subcode}" if decision.subcode else "")
        if decision.verdict == "sent":
            detail = "the answer carried no attachment_id"
        else:
            detail = f"Meta error {code}: {decision.message}".rstrip(": ")
        reason = (
            f"attachment upload failed: the {kind} could not be uploaded through"
            f" message_attachments ({detail}; {attempts} attempt{'s' if attempts > 1 else ''})"
        )[:300]
        log.error("stopping job", extra={"job_id": k.job_id, "reason": reason})
        await control.stop_job(self.scripts, k, "failed", reason)
