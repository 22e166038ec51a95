"""Providers: one small contract per channel, one module per implementation.

A job names its channel (``"channel": "messenger" | "whatsapp"``, stored in the job hash;
absent means messenger). Everything else in fanout (the stream engine, the ledger, leases,
pause/cancel, fairness, the limiter, the page breaker, suppressions, the window) works on a
*sender* id and a recipient id and never asks which channel it serves. What differs per
channel sits behind this contract, and a new channel adds a module, not branches:

  Provider  (one stateless object per channel; ``provider_for(channel)``)
    channel                   "messenger" | "whatsapp": the job hash's ``channel``
    sender_field              what the API calls the sender: "page_id" | "phone_number_id".
                              The id is stored in the job hash's ``page_id`` slot either way,
                              so every per-page key (GCRA, breaker, suppressions, window,
                              tenant binding) works per WhatsApp number unchanged: Meta's
                              object ids are unique across types, a number never is a page
    decode_message(raw)       the job hash's ``message`` as this channel's msgspec Struct
    token(settings, sender)   the sender's token from configuration (FANOUT_PAGE_TOKENS or
                              FANOUT_WA_NUMBERS), or None; it never leaves memory
    path(version, sender)     the send endpoint: /{version}/me/messages or
                              /{version}/{phone_number_id}/messages (the head, with the
                              token, is framed once per job by shared.provider's client)
    prepare(message, upload)  the message to send once per job (Messenger uploads media by
                              URL once and sends it by id); None when it cannot be sent
    is_media(message)         whether the sender's media limit applies too
    request(job_id, fields)   the job's ``Request``: what every message of the job shares
    classify(result)          one ``SendResult`` -> a ``shared.classify.Decision``; the
                              answer table lives in the provider's module, sources there
    rates(settings)           the sender's GCRA rates (permits/s, on ``keys.rate(sender)``)
    recipient_limit(settings) a fleet-wide per-recipient permit (key builder + interval), or
                              None: WhatsApp's pair limit (one message per 6 s to a person)
    webhook_path              where Meta posts this channel's webhooks (receipts, inbound,
    decode_webhook(body)      quality); the decoded notification, processed by the
                              consumers' stream engine (services/consumer/events.py)

  Request  (one per job; built once, used for every recipient: the hot path)
    body(recipient, values)   the request body for one recipient, personalised from their
                              CSV values, or the failure of a message that breaks one of the
                              provider's limits once filled (a Decision, verdict "failed")
    tagged(body, position)    the body with the job+position correlation string
                              (``shared.webhooks.metadata``: Messenger's ``metadata``,
                              WhatsApp's ``biz_opaque_callback_data``), which receipts carry
    has_fallback              whether people outside the 24-hour window get a fallback
    fallback_body(recipient)  that fallback (Messenger's utility template)

The HTTP transport (``shared.provider``: the pool, ``SendResult``) is channel-neutral: it
POSTs a framed head and a body and parses Graph's JSON answer, which both channels share.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, NamedTuple, Protocol

import msgspec

from shared.models import Message

if TYPE_CHECKING:
    from shared.classify import Decision
    from shared.provider import SendResult
    from shared.settings import ConsumerSettings, Secret

MESSENGER = "messenger"
CHANNELS = ("messenger", "whatsapp")
# Channel -> the module whose ``PROVIDER`` implements it; imported on first use, so importing
# the contract never imports every channel (and shared.classify can re-export Messenger's table).
_MODULES = {"messenger": "shared.providers.messenger", "whatsapp": "shared.providers.whatsapp"}


class UnknownChannel(ValueError):
    """A job hash names a channel this build does not know (a newer producer's job)."""


class JobFields(msgspec.Struct, frozen=True):
    """What every message of one job shares, as the job hash stores it."""

    page_id: str  # the sender: a page, or a WhatsApp phone_number_id
    message: msgspec.Struct  # the channel's message, placeholders unfilled when ``personal``
    messaging_type: str  # Messenger only ("" for WhatsApp)
    tag: str | None  # Messenger only
    personal: bool  # the message has placeholders, filled per recipient
    window_require: bool = False  # skip (or send the fallback to) people outside the window
    suppress: bool = True  # skip the sender's suppressed people
    fallback: Message | None = None  # Messenger's utility template for people outside it
    channel: str = MESSENGER


class Rates(NamedTuple):
    """A channel's GCRA rates: permits/s per sender (0 = unlimited) and per-sender overrides;
    the media limit applies on top for messages ``is_media`` says are audio or video."""

    default: int
    per_sender: dict[str, int]
    media_default: int = 0
    media_per_sender: dict[str, int] = {}  # a NamedTuple default: shared, never mutated
    # The rate holds in every one-second window, not on average with a burst tolerance
    # (WhatsApp's per-number mps): services/consumer/limiter.py ``strict_rate``.
    strict: bool = False


class RecipientLimit(NamedTuple):
    """A fleet-wide limit per (sender, recipient): one send per ``interval_ms``, taken as a
    permit on ``key(sender, recipient)`` (SET NX PX: whoever sets it may send)."""

    key: Callable[[str, str], str]
    interval_ms: int


Upload = Callable[[Message], Awaitable[Message | None]]


class Request(Protocol):
    """One job's request builder; every method runs once per recipient or not at all."""

    @property
    def has_fallback(self) -> bool: ...

    def body(self, recipient: str, values: dict[str, str] | None) -> bytes | Decision: ...

    def tagged(self, body: bytes, position: int) -> bytes: ...

    def fallback_body(self, recipient: str) -> bytes: ...


class Provider(Protocol):
    channel: str
    sender_field: str
    webhook_path: str

    def decode_message(self, raw: bytes) -> msgspec.Struct: ...

    def token(self, settings: ConsumerSettings, sender: str) -> Secret | None: ...

    def path(self, version: str, sender: str) -> str: ...

    async def prepare(self, message: msgspec.Struct, upload: Upload) -> msgspec.Struct | None: ...

    def is_media(self, message: msgspec.Struct) -> bool: ...

    def request(self, job_id: str, fields: JobFields) -> Request: ...

    def classify(self, result: SendResult) -> Decision: ...

    def rates(self, settings: ConsumerSettings) -> Rates: ...

    def recipient_limit(self, settings: ConsumerSettings) -> RecipientLimit | None: ...

    def decode_webhook(self, body: bytes) -> msgspec.Struct: ...


_loaded: dict[str, Provider] = {}


def provider_for(channel: str | None) -> Provider:
    """The provider of a job's channel (None or "" is Messenger: jobs from before channels)."""
    name = channel or MESSENGER
    provider = _loaded.get(name)
    if provider is None:
        module = _MODULES.get(name)
        if module is None:
            raise UnknownChannel(f"unknown channel {name!r}; known: {', '.join(CHANNELS)}")
        provider = _loaded[name] = importlib.import_module(module).PROVIDER
    return provider
