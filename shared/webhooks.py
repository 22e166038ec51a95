"""Meta's Messenger webhooks as msgspec Structs, the signature, and our send metadata.

Payload shapes as Meta documents them:
https://developers.facebook.com/documentation/business-messaging/messenger-platform/webhooks
(verification, ``X-Hub-Signature-256``, batching, retries) and
https://developers.facebook.com/documentation/business-messaging/messenger-platform/webhooks/webhook-events
(``message``, ``message_echoes``, ``message_deliveries``, ``message_reads``,
``messaging_postbacks``, ``messaging_optins``, ``messaging_referrals``, reactions,
``messaging_policy_enforcement``). Every field not listed here is ignored, so Meta adding one
breaks nothing.

Each send carries ``metadata`` naming its job and recipient position (``fo1:<job>:<pos>``,
well under Meta's 1,000 characters); Meta hands it back in the echo of that message.
"""

from __future__ import annotations

import hashlib
import hmac
import zlib

import msgspec

from shared import keys

SIGNATURE_HEADER = "X-Hub-Signature-256"
MAX_BODY = 1024 * 1024  # Meta's batches are small; anything larger is not Meta
_METADATA_PREFIX = "fo1:"


class Party(msgspec.Struct):
    id: str = ""


class Message(msgspec.Struct):
    mid: str = ""
    is_echo: bool = False
    metadata: str | None = None


class Watermark(msgspec.Struct):
    watermark: int = 0
    mids: list[str] | None = None


class Enforcement(msgspec.Struct):
    action: str = ""
    reason: str = ""


class Messaging(msgspec.Struct, kw_only=True):
    sender: Party = msgspec.field(default_factory=Party)
    recipient: Party = msgspec.field(default_factory=Party)
    timestamp: int = 0
    message: Message | None = None
    delivery: Watermark | None = None
    read: Watermark | None = None
    postback: dict[str, object] | None = None
    reaction: dict[str, object] | None = None
    referral: dict[str, object] | None = None
    optin: dict[str, object] | None = None
    # Meta's reference spells it with a hyphen; some of its examples with an underscore.
    policy_enforcement: Enforcement | None = msgspec.field(default=None, name="policy-enforcement")
    policy_enforcement_alt: Enforcement | None = msgspec.field(
        default=None, name="policy_enforcement"
    )

    def field(self) -> str:
        """The webhook field (subscription name) this event belongs to."""
        if self.message is not None:
            return "message_echoes" if self.message.is_echo else "messages"
        if self.delivery is not None:
            return "message_deliveries"
        if self.read is not None:
            return "message_reads"
        if self.postback is not None:
            return "messaging_postbacks"
        if self.reaction is not None:
            return "message_reactions"
        if self.referral is not None:
            return "messaging_referrals"
        if self.optin is not None:
            return "messaging_optins"
        if self.enforcement() is not None:
            return "messaging_policy_enforcement"
        return "other"

    def enforcement(self) -> Enforcement | None:
        return self.policy_enforcement or self.policy_enforcement_alt


class Entry(msgspec.Struct):
    id: str = ""
    time: int = 0
    messaging: list[Messaging] = msgspec.field(default_factory=list)


class Notification(msgspec.Struct):
    object: str
    entry: list[Entry]


notification_decoder = msgspec.json.Decoder(Notification)


class _EntryHead(msgspec.Struct):
    id: str = ""


class Head(msgspec.Struct):
    """What the receiver checks before storing a POST: Meta's envelope and the page; the
    events themselves are decoded (and skipped here, cheaply) by the consumers."""

    object: str
    entry: list[_EntryHead]


head_decoder = msgspec.json.Decoder(Head)

# Inbound events that open (or reopen) the person's 24-hour window.
OPENS_WINDOW = frozenset(
    {
        "messages",
        "messaging_postbacks",
        "message_reactions",
        "messaging_referrals",
        "messaging_optins",
    }
)


def sign(secret: str, body: bytes) -> str:
    """The header value Meta sends: HMAC-SHA256 of the raw body, lowercase hex."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def signature_ok(secret: str, body: bytes, header: str | None) -> bool:
    """Constant-time check of ``X-Hub-Signature-256`` over the bytes exactly as received
    (Meta signs an escaped-unicode serialisation: re-encoding would break it)."""
    if not header:
        return False
    return hmac.compare_digest(sign(secret, body).encode(), header.strip().encode())


def page_of(body: Notification | Head) -> str:
    """The page the POST is about (its first entry's): the inbox shard follows it."""
    return body.entry[0].id if body.entry else ""


def metadata(job_id: str, position: int) -> str:
    return f"{_METADATA_PREFIX}{job_id}:{position}"


def parse_metadata(text: str | None) -> tuple[str, int] | None:
    """(job id, position) from our own metadata; None for anything else (a human's reply
    from the page inbox, another app's send)."""
    if not text or not text.startswith(_METADATA_PREFIX):
        return None
    job_id, _, pos = text[len(_METADATA_PREFIX) :].rpartition(":")
    if keys.shard_of(job_id) is None or not pos.isdigit():
        return None
    return job_id, int(pos)


def inbox_shard(page_id: str, shards: int) -> int:
    """The shard whose inbox takes a page's events: fixed per page, so they share a stream."""
    return zlib.crc32(page_id.encode()) % shards
