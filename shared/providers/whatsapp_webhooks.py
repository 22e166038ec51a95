"""WhatsApp Cloud API webhooks as msgspec Structs, and what fanout reads from them: status
receipts, inbound messages (the service window) and quality changes of a number.

Payloads as Meta documents them (every field not listed here is ignored, so Meta adding one
breaks nothing):
- statuses: https://developers.facebook.com/documentation/business-messaging/whatsapp/webhooks/reference/messages/status/
  (``sent``, ``delivered``, ``read``, ``failed`` with ``errors[]``; ``biz_opaque_callback_data``
  as set on the send; "the 'delivered' webhook is not sent because it's implied" by ``read``)
- inbound messages: https://developers.facebook.com/documentation/business-messaging/whatsapp/webhooks/reference/messages
  (``messages[].from``, ``timestamp`` in unix seconds as a string)
- errors: https://developers.facebook.com/documentation/business-messaging/whatsapp/webhooks/reference/messages/errors
  (a problem with the app or account, not one message: logged)
- quality: https://developers.facebook.com/documentation/business-messaging/whatsapp/webhooks/reference/phone_number_quality_update
  (``display_phone_number``, ``event``, ``current_limit``; it names the number by its display
  number only, so the consumers learn display -> id from the ``metadata`` of other events)
- signature and verification: the same ``X-Hub-Signature-256`` and ``hub.*`` as Messenger,
  https://developers.facebook.com/documentation/business-messaging/whatsapp/webhooks/create-webhook-endpoint

Meta neither orders nor de-duplicates these, and "delivered events may happen after failed"
on a person's second device (an integrator's account of Meta's statuses:
https://docs.ycloud.com/reference-link/whatsapp-message-updated-webhook-examples), so what is
read here is applied idempotently and order-free (services/consumer/wa_events.py).
"""

from __future__ import annotations

from typing import Literal

import msgspec

OBJECT = "whatsapp_business_account"
CHANNEL = "whatsapp"  # the inbox entry's channel field (services/producer/webhooks.py)
# A quality event that pauses the number's jobs: Meta lowered the number's limit or flagged its
# quality (FLAGGED precedes a downgrade unless quality recovers within days).
PAUSING_EVENTS = frozenset({"DOWNGRADE", "FLAGGED"})
_ERROR_TEXT_MAX = 300

StatusName = Literal["sent", "delivered", "read", "failed"]


class Metadata(msgspec.Struct):
    display_phone_number: str = ""
    phone_number_id: str = ""


class ErrorData(msgspec.Struct):
    details: str = ""


class StatusError(msgspec.Struct):
    code: int = 0
    title: str = ""
    message: str = ""
    error_data: ErrorData | None = None


class Pricing(msgspec.Struct):
    billable: bool = False
    category: str = ""
    pricing_model: str = ""


class Status(msgspec.Struct):
    id: str = ""  # the wamid of our send
    status: str = ""
    timestamp: str = "0"
    recipient_id: str = ""
    biz_opaque_callback_data: str | None = None
    errors: list[StatusError] = []
    pricing: Pricing | None = None


class Inbound(msgspec.Struct):
    sender: str = msgspec.field(default="", name="from")
    id: str = ""
    timestamp: str = "0"
    type: str = ""


class Value(msgspec.Struct):
    """A change's value: the ``messages`` field's (metadata, statuses, messages) or the
    ``phone_number_quality_update`` field's (display number, event, limits) shape."""

    metadata: Metadata | None = None
    statuses: list[Status] = []
    messages: list[Inbound] = []
    errors: list[StatusError] = []  # a system-, app- or account-level problem
    display_phone_number: str = ""
    event: str = ""
    current_limit: str = ""
    old_limit: str = ""


class Change(msgspec.Struct):
    field: str = ""
    value: Value = msgspec.field(default_factory=Value)


class Entry(msgspec.Struct):
    id: str = ""  # the WhatsApp Business Account
    time: int = 0
    changes: list[Change] = []


class Notification(msgspec.Struct):
    object: str
    entry: list[Entry]


notification_decoder = msgspec.json.Decoder(Notification)


class _EntryHead(msgspec.Struct):
    id: str = ""


class Head(msgspec.Struct):
    """What the receiver checks before storing a POST (the consumers decode the rest)."""

    object: str
    entry: list[_EntryHead]


head_decoder = msgspec.json.Decoder(Head)


# --- what fanout reads ---------------------------------------------------------------------


class Receipt(msgspec.Struct, frozen=True):
    """One status of one of our sends, keyed by the job + position metadata it carried."""

    number: str  # phone_number_id that sent it
    status: StatusName
    callback: str  # biz_opaque_callback_data (parse with shared.webhooks.parse_metadata)
    recipient: str
    wamid: str
    ts_s: int
    code: str = ""  # failed: the first error's code
    detail: str = ""  # failed: every error, code title: details
    billable: str = ""  # the pricing category when Meta says the message is billable


class Touch(msgspec.Struct, frozen=True):
    """A person wrote to a number: their 24-hour service window opens."""

    number: str
    person: str
    ts_ms: int


class Quality(msgspec.Struct, frozen=True):
    display: str  # the number as displayed (the event names no phone_number_id)
    event: str
    current_limit: str


class Problem(msgspec.Struct, frozen=True):
    """An error Meta reports about the number or the app, not about one message."""

    number: str
    code: str
    detail: str


class Read(msgspec.Struct):
    receipts: list[Receipt] = []
    touches: list[Touch] = []
    quality: list[Quality] = []
    problems: list[Problem] = []
    # display number -> phone_number_id, from every metadata seen (for quality events)
    numbers: dict[str, str] = {}


def _seconds(text: str) -> int:
    return int(text) if text.isdigit() else 0


def _errors(errors: list[StatusError]) -> tuple[str, str]:
    if not errors:
        return "", ""
    parts = []
    for e in errors:
        details = e.error_data.details if e.error_data is not None else ""
        text = f"{e.code} {e.title or e.message}"
        parts.append(f"{text}: {details}" if details else text)
    return str(errors[0].code), "; ".join(parts)[:_ERROR_TEXT_MAX]


def _receipt(number: str, s: Status) -> Receipt | None:
    if s.status not in ("sent", "delivered", "read", "failed") or not s.biz_opaque_callback_data:
        return None  # a status of a send that is not ours, or one fanout does not count
    code, detail = _errors(s.errors) if s.status == "failed" else ("", "")
    billable = s.pricing.category if s.pricing is not None and s.pricing.billable else ""
    return Receipt(
        number=number,
        status=s.status,  # type: ignore[arg-type]  # checked just above
        callback=s.biz_opaque_callback_data,
        recipient=s.recipient_id,
        wamid=s.id,
        ts_s=_seconds(s.timestamp),
        code=code,
        detail=detail,
        billable=billable,
    )


def read(notification: Notification) -> Read:
    """Everything fanout acts on in one POST, in Meta's order (the caller must not rely on it)."""
    found = Read()
    for entry in notification.entry:
        for change in entry.changes:
            value = change.value
            if change.field == "phone_number_quality_update":
                if value.display_phone_number and value.event:
                    event = value.event.upper()
                    found.quality.append(
                        Quality(value.display_phone_number, event, value.current_limit)
                    )
            elif change.field == "messages" and value.metadata is not None:
                _read_messages(value, value.metadata, found)
    return found


def _read_messages(value: Value, metadata: Metadata, found: Read) -> None:
    """A ``messages`` change: statuses of sends, inbound messages, errors, of one number."""
    number = metadata.phone_number_id
    if not number:
        return
    if metadata.display_phone_number:
        found.numbers[metadata.display_phone_number] = number
    for status in value.statuses:
        receipt = _receipt(number, status)
        if receipt is not None:
            found.receipts.append(receipt)
    if value.errors:
        found.problems.append(Problem(number, *_errors(value.errors)))
    for message in value.messages:
        if message.sender:
            ts_ms = _seconds(message.timestamp) * 1000
            found.touches.append(Touch(number, message.sender, ts_ms))
