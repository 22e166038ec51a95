"""Messenger Send API behind the provider contract (shared/providers/__init__.py).

Request: ``POST {graph_url}/{version}/me/messages`` with the page token, body
``{"recipient":{"id":PSID},"message":{...},"messaging_type":...,"tag"?,"metadata"?}``
(https://developers.facebook.com/docs/messenger-platform/reference/send-api/).

Answers: one table, subcode first, tested row by row. Meta's error table (updated Jun 25, 2026):
https://developers.facebook.com/documentation/business-messaging/messenger-platform/error-codes
and the Graph API's error handling guide:
https://developers.facebook.com/docs/graph-api/guides/error-handling

A (code, subcode) row wins over its code's row: 613/2018338 fails the person although 613
otherwise throttles the page, and 10/1893063 restricts the page although 10 otherwise fails
the person.

  (code, subcode)    verdict     what fanout does
  10/2018278         failed      outside the allowed window: never retried in the job
  10/2534022         failed      outside the allowed window
  10/2018108         failed      the person can't receive your messages right now
  100/2018001        failed      no matching user
  200/1545041        failed      person unavailable
  551/1545041        failed      person unavailable (blocked)
  10/1893015         failed      the person opted out of these messages
  613/2018338        failed      too many tagged messages to this person (not a page throttle)
  4/2018354          failed      marketing message frequency for this person
  100/1893061        failed      retired tag (refused at submit; a job from before still ends)
  100/33             fatal       the page no longer exists: the job cannot go on
  10/1893063         restricted  the page is restricted from sending: every job of the page
                                 is paused fleet-wide until a user resumes one
  code 190           fatal       token invalid or expired: the job stops
  codes 4 17 32 613, HTTP 429
                     throttled   the page cools down fleet-wide; the recipient is retried
  codes 1 2 1200, is_transient, HTTP 5xx, timeouts, resets
                     retry       within the recipient's retry budget in time; a page whose
                                 answers turn mostly transient is held by the circuit breaker
                                 (services/consumer/pagehealth.py). Code 2 may also mean the
                                 person blocked the page: bounded per recipient
  anything else      failed      with the provider's code and subcode

The pairs in ``SUPPRESS`` (551/1545041, 200/1545041, 100/2018001, 10/1893015) are permanent
for the person: blocked the page, no such user (an unknown or invalid PSID), opted out. Their
decision carries ``suppress``, and the person joins the page's suppression list
(shared/suppressions.py), so later jobs skip them without asking Meta again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from shared import messages, webhooks
from shared.classify import SENT, Decision, Verdict
from shared.messages import Message, Personalised, RenderError
from shared.models import json_encode
from shared.providers import JobFields, Rates, RecipientLimit, Upload

if TYPE_CHECKING:
    from shared.provider import SendResult
    from shared.settings import ConsumerSettings, Secret

RATE_LIMIT_CODES = frozenset({4, 17, 32, 613})
TRANSIENT_CODES = frozenset({1, 2, 1200})
FATAL_CODES = frozenset({190})
# Rows that decide by code and subcode, before any rule by code alone.
PAIRS: dict[tuple[int, int], Verdict] = {
    (10, 2018278): "failed",  # outside the allowed window
    (10, 2534022): "failed",  # outside the allowed window
    (10, 2018108): "failed",  # can't receive your messages right now
    (100, 2018001): "failed",  # no matching user
    (200, 1545041): "failed",  # person unavailable
    (551, 1545041): "failed",  # person unavailable
    (10, 1893015): "failed",  # opted out of these messages
    (613, 2018338): "failed",  # too many tagged messages to this person
    (4, 2018354): "failed",  # marketing message frequency for this person
    (100, 1893061): "failed",  # retired message tag
    (100, 33): "fatal",  # the page no longer exists
    (10, 1893063): "restricted",  # the page is temporarily restricted from sending
}
# Failed rows that are permanent for the person: they join the page's suppression list.
SUPPRESS: frozenset[tuple[int, int]] = frozenset(
    {(551, 1545041), (200, 1545041), (100, 2018001), (10, 1893015)}
)


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
    if error.error_subcode is not None:
        pair = PAIRS.get((error.code, error.error_subcode))
        if pair is not None:
            suppress = (error.code, error.error_subcode) in SUPPRESS
            return Decision(pair, code, subcode, error.message, suppress=suppress)
    if error.code in RATE_LIMIT_CODES or result.status == 429:
        return Decision("throttled", code, subcode, error.message, result.retry_after)
    if error.code in FATAL_CODES:
        return Decision("fatal", code, subcode, error.message)
    if error.code in TRANSIENT_CODES or error.is_transient or result.status >= 500:
        return Decision("retry", code, subcode, error.message, result.retry_after)
    return Decision("failed", code, subcode, error.message)


class MessengerRequest:
    """What every message of one job shares, the Send API body pre-split around the PSID.

    A message without placeholders is encoded once; a personalised one is filled per recipient
    and checked against Meta's limits again (``shared.messages.Personalised``)."""

    __slots__ = ("_fallback", "_meta", "_personalised", "_prefix", "_rest", "_suffix", "job_id")

    def __init__(
        self,
        job_id: str,
        message: Message,
        messaging_type: str,
        tag: str | None,
        personal: bool = False,
        fallback: Message | None = None,
    ) -> None:
        self.job_id = job_id
        # For people outside the window: Meta's utility lane, a template and no tag.
        self._fallback = (
            None
            if fallback is None
            else b'},"message":' + messages.encode(fallback) + b',"messaging_type":"UTILITY"}'
        )
        self._personalised = Personalised(message) if personal else None
        self._prefix = b'{"recipient":{"id":'
        rest: dict[str, str] = {"messaging_type": messaging_type}
        if tag:
            rest["tag"] = tag
        self._rest = b"," + json_encode(rest)[1:]  # ',"messaging_type":...}'
        self._suffix = b'},"message":' + messages.encode(message) + self._rest
        self._meta = webhooks.metadata(job_id, 0)[:-1].encode()  # "fo1:<job>:"

    def body(self, psid: str, values: dict[str, str] | None) -> bytes | Decision:
        """The Send API body for one recipient, or the failure of a message that breaks one
        of Meta's limits once filled for them."""
        suffix = self._suffix
        if self._personalised is not None:
            try:
                filled = self._personalised.render_json(values or {})
            except RenderError as exc:
                return Decision("failed", exc.code, "", exc.message)
            suffix = b'},"message":' + filled + self._rest
        return self._prefix + json_encode(psid) + suffix

    def tagged(self, body: bytes, position: int) -> bytes:
        """The body with Meta's ``metadata`` naming job and recipient, which Meta hands back
        in the message's echo so receipts find their way to the job (services/consumer/
        receipts.py); job ids and positions need no JSON escaping."""
        return b'%s,"metadata":"%s%d"}' % (body[:-1], self._meta, position)

    @property
    def has_fallback(self) -> bool:
        return self._fallback is not None

    def fallback_body(self, psid: str) -> bytes:
        if self._fallback is None:
            raise RuntimeError(f"job {self.job_id} has no fallback message")
        return self._prefix + json_encode(psid) + self._fallback


_MEDIA = (messages.AudioAttachment, messages.VideoAttachment)


def is_media(message: Message) -> bool:
    """Audio or video: Meta allows 10/s of these per page (the media limit), beside the rest."""
    attachment = message.attachment
    if isinstance(attachment, _MEDIA):
        return True
    if isinstance(attachment, messages.TemplateAttachment) and isinstance(
        attachment.payload, messages.MediaTemplate
    ):
        return any(e.media_type == "video" for e in attachment.payload.elements)
    return False


def _message(message: msgspec.Struct) -> Message:
    if not isinstance(message, Message):
        raise TypeError(f"a Messenger job holds a Messenger message, not {type(message)}")
    return message


class Messenger:
    channel = "messenger"
    sender_field = "page_id"
    webhook_path = "/webhooks/messenger"

    def decode_message(self, raw: bytes) -> Message:
        return messages.decode(raw)

    def token(self, settings: ConsumerSettings, sender: str) -> Secret | None:
        return settings.page_tokens.get(sender)

    def path(self, version: str, sender: str) -> str:
        return f"/{version}/me/messages"  # the token names the page

    async def prepare(self, message: msgspec.Struct, upload: Upload) -> Message | None:
        # An attachment by URL is uploaded once for the job, and sent by its id.
        return await upload(_message(message))

    def is_media(self, message: msgspec.Struct) -> bool:
        return is_media(_message(message))

    def request(self, job_id: str, fields: JobFields) -> MessengerRequest:
        return MessengerRequest(
            job_id,
            _message(fields.message),
            fields.messaging_type,
            fields.tag,
            fields.personal,
            fields.fallback,
        )

    def classify(self, result: SendResult) -> Decision:
        return classify(result)

    def rates(self, settings: ConsumerSettings) -> Rates:
        return Rates(
            settings.rate_limit,
            settings.page_rate_limits,
            settings.media_rate_limit,
            settings.page_media_rate_limits,
        )

    def recipient_limit(self, settings: ConsumerSettings) -> RecipientLimit | None:
        return None  # Meta limits Messenger per page, not per person

    def decode_webhook(self, body: bytes) -> webhooks.Notification:
        return msgspec.json.decode(body, type=webhooks.Notification)


PROVIDER = Messenger()
