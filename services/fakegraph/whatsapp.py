"""fakegraph's WhatsApp Cloud API: ``POST /{version}/{phone_number_id}/messages``.

The route is Messenger's own shape (``/{version}/{id}/messages``), so a send is WhatsApp's when
its body names ``messaging_product`` or its id is one of the config's ``wa_numbers``. It is
checked in this order, as Meta would, each answer in Meta's shape (the error's ``code``, its
title in ``message`` and ``error_data.details``):

    outage (503, code 2) -> token (190) -> body (100 / 131008 / 131009)
    -> throughput (wa_throughput per number per wall-clock second: 130429)
    -> spam (wa_spam_after accepted sends, then every send: 131048)
    -> pair (a send to the same person within wa_pair_interval_s of the last accepted one:
       131056, counted in ``pair_violations``)
    -> injected (wa_errors: a code for chosen recipients: 131026, 131050, 131047, ...)
    -> window (wa_enforce_window: a text to a person whose last message, fed through
       /_fake/window or /_fake/inbound, is over 24 h old or unknown: 131047)
    -> fail_rate (HTTP 500, 131000)
    -> accepted: ``contacts`` and ``messages[0].id`` = a ``wamid.``; a person new in the
       portfolio's moving 24 h (``wa_portfolios``; a lone number is its own) who has no open
       window counts against ``wa_tier``, and beyond
       the tier the send is still accepted and counted in ``tier_violations`` (Meta has no
       dedicated code for it); the answer then spoilt at the bad-answer rates, as Messenger's

``GET /_fake/whatsapp`` says what the fake saw: every accepted send with its receive time,
number, recipient and type (tests count sends per second and per person from it), the pair
and tier violations, and people reached per portfolio.

Sources:
  send body and answer  https://developers.facebook.com/docs/whatsapp/cloud-api/reference/messages
  error codes           https://developers.facebook.com/documentation/business-messaging/whatsapp/support/error-codes
  throughput            https://developers.facebook.com/documentation/business-messaging/whatsapp/throughput
  pair limit            https://developers.facebook.com/documentation/business-messaging/whatsapp/about-the-platform
  messaging limits      https://developers.facebook.com/documentation/business-messaging/whatsapp/messaging-limits
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import msgspec

from services.fakegraph import responses as r

if TYPE_CHECKING:
    from services.fakegraph.graph import Answer, FakeGraph

_DAY_S = 24 * 3600
_DIGITS = re.compile(r"^\+?[0-9]{8,15}$")
MAX_SENDS = 200_000  # accepted sends kept for /_fake/whatsapp
MAX_BODY = 4096  # text.body
# The message types of Meta's send body (only text and template are checked in depth).
_OTHER_TYPES = frozenset(
    {
        *("audio", "contacts", "document", "image", "interactive"),
        *("location", "reaction", "sticker", "video"),
    }
)


# ---- Meta's answers (error-codes page above; titles in ``message``, details in error_data) ----


# Meta's error shape and codes: {"error": {"message": "(#<code>) <title>", "type", "code",
# "error_data": {"messaging_product": "whatsapp", "details"}, "fbtrace_id"}},
# https://developers.facebook.com/documentation/business-messaging/whatsapp/support/error-codes
def _wa(code: int, title: str, details: str, status: int = 400) -> r.GraphError:
    return r.GraphError(status, code, f"(#{code}) {title}", details=details)


THROUGHPUT = _wa(130429, "Rate limit hit", "Cloud API message throughput has been reached.")
PAIR_LIMIT = _wa(
    131056,
    "(Business Account, Consumer Account) pair rate limit hit",
    "Message failed to send because there were too many messages sent from this phone number "
    "to the same phone number in a short period of time.",
)
SPAM = _wa(
    131048,
    "Spam rate limit hit",
    "Message failed to send because there are restrictions on how many messages can be sent "
    "from this phone number. This may be because too many previous messages were blocked or "
    "flagged as spam.",
)
UNDELIVERABLE = _wa(
    131026,
    "Message undeliverable",
    "Unable to deliver message. Reasons can include: the recipient phone number is not a "
    "WhatsApp phone number; the recipient has not accepted WhatsApp's terms of service; the "
    "recipient is using an old WhatsApp version.",
)
REENGAGEMENT = _wa(
    131047,
    "Re-engagement message",
    "Message failed to send because more than 24 hours have passed since the customer last "
    "replied to this number.",
)
ECOSYSTEM = _wa(
    131049,
    "This message was not delivered to maintain healthy ecosystem engagement.",
    "In order to maintain a healthy ecosystem engagement, the message failed to be delivered.",
)
STOPPED_MARKETING = _wa(
    131050,
    "Unable to deliver the message. This recipient has chosen to stop receiving marketing "
    "messages on WhatsApp from your business.",
    "The recipient has chosen to stop receiving marketing messages on WhatsApp from your business.",
)
SOMETHING_WRONG = _wa(
    131000, "Something went wrong", "Message failed to send due to an unknown error.", 500
)
POLICY_BLOCKED = _wa(
    368,
    "Temporarily blocked for policies violations",
    "The WhatsApp Business Account associated with the app has been restricted or disabled "
    "for violating a platform policy.",
)
WABA_RATE = _wa(
    80007, "Rate limit issues", "The WhatsApp Business Account has reached its rate limit."
)
NO_TEMPLATE = _wa(
    132001,
    "Template name does not exist in the translation",
    "The template name does not exist in the language given.",
)
PARAMETER_COUNT = _wa(
    132000,
    "Number of parameters does not match the expected number of params",
    "The number of variable parameter values included in the request did not match the "
    "number of variable parameters defined in the template.",
)
PARAMETER_FORMAT = _wa(
    132012,
    "Parameter format does not match format in the created template",
    "Variable parameter values formatted incorrectly.",
)
TEMPLATE_PAUSED = _wa(132015, "Template is Paused", "Template is paused due to low quality.")
TEMPLATE_DISABLED = _wa(132016, "Template is Disabled", "Template has been paused too many times.")
ACCESS_DENIED = _wa(
    131005, "Access denied", "Permission is either not granted or has been removed."
)
SERVICE_UNAVAILABLE = _wa(
    131016,
    "Service unavailable",
    "A service is temporarily unavailable. Please check our status page before retrying.",
    500,
)
ACCOUNT_LOCKED = _wa(
    131031,
    "Business Account locked",
    "The WhatsApp Business Account associated with the app has been locked for a policy violation.",
)
PAYMENT_ISSUE = _wa(
    131042,
    "Business eligibility payment issue",
    "Message failed to send because there were one or more errors related to your payment method.",
)
CERTIFICATE = _wa(
    131045,
    "Incorrect certificate",
    "Message failed to send due to a phone number registration error.",
)
NOT_REGISTERED = _wa(
    133010,
    "Phone number not registered",
    "The phone number is not registered on the WhatsApp Business Platform.",
)
# Graph's own code 4 (the app's call limit), no WhatsApp details:
# https://developers.facebook.com/docs/graph-api/overview/rate-limiting
APP_LIMIT = r.GraphError(400, 4, "(#4) Application request limit reached")
# The codes `wa_errors` may give a recipient.
INJECTABLE: dict[int, r.GraphError] = {
    e.code: e
    for e in (
        *(UNDELIVERABLE, STOPPED_MARKETING, REENGAGEMENT, ECOSYSTEM, SPAM, PAIR_LIMIT),
        *(THROUGHPUT, SOMETHING_WRONG, POLICY_BLOCKED, WABA_RATE, APP_LIMIT, NO_TEMPLATE),
        *(PARAMETER_COUNT, PARAMETER_FORMAT, TEMPLATE_PAUSED, TEMPLATE_DISABLED),
        *(ACCESS_DENIED, SERVICE_UNAVAILABLE, ACCOUNT_LOCKED, PAYMENT_ISSUE, CERTIFICATE),
        NOT_REGISTERED,
    )
}


def missing(parameter: str) -> r.GraphError:
    return _wa(131008, "Required parameter is missing", f"The parameter {parameter} is required.")


def invalid(details: str) -> r.GraphError:
    return _wa(131009, "Parameter value is not valid", details)


NO_PRODUCT = r.GraphError(400, 100, "(#100) The parameter messaging_product is required.")
INVALID_BODY = r.GraphError(400, 100, "(#100) Invalid parameter")


def wrong_product(value: str) -> r.GraphError:
    return r.GraphError(
        400, 100, f'(#100) Param messaging_product must be one of {{WHATSAPP}} - got "{value}".'
    )


def body_too_long() -> r.GraphError:
    return r.GraphError(
        400, 100, f"(#100) Param text['body'] must be at most {MAX_BODY} characters long."
    )


# https://developers.facebook.com/docs/whatsapp/cloud-api/reference/messages (response)
def success_body(to: str, wa_id: str, wamid: str, template: bool) -> bytes:
    """Meta's answer to an accepted send; templates carry ``message_status`` "accepted"."""
    message: dict[str, str] = {"id": wamid}
    if template:
        message["message_status"] = "accepted"
    return r.json_body(
        {
            "messaging_product": "whatsapp",
            "contacts": [{"input": to, "wa_id": wa_id}],
            "messages": [message],
        }
    )


# ---- the send body, as far as the fake reads it ----


class _Text(msgspec.Struct):
    body: str | None = None
    preview_url: bool | None = None


class _Language(msgspec.Struct):
    code: str | None = None


class _Template(msgspec.Struct):
    name: str | None = None
    language: _Language | None = None
    components: list[dict[str, object]] | None = None


class WaSend(msgspec.Struct):
    """The send body; unknown fields are ignored, as the other message types' objects are."""

    messaging_product: str | None = None
    recipient_type: str | None = None
    to: str | int | None = None
    type: str | None = None
    text: _Text | None = None
    template: _Template | None = None
    biz_opaque_callback_data: str | None = None
    access_token: str | None = None


_decode = msgspec.json.Decoder(WaSend).decode
_decode_types = msgspec.json.Decoder(dict[str, object]).decode


def is_whatsapp(body: bytes) -> bool:
    """A Messenger body never names ``messaging_product``; every WhatsApp body must."""
    return b'"messaging_product"' in body


def decode(body: bytes) -> WaSend | None:
    try:
        return _decode(body)
    except msgspec.MsgspecError:
        return None


def problem(request: WaSend, body: bytes) -> r.GraphError | None:
    """What Meta would refuse in this body, or None."""
    if request.messaging_product is None:
        return NO_PRODUCT
    if request.messaging_product.lower() != "whatsapp":
        return wrong_product(request.messaging_product)
    if request.recipient_type not in (None, "individual"):
        return invalid(f"Invalid recipient_type: {request.recipient_type}")
    if request.to is None or request.to == "":
        return missing("to")
    if not _DIGITS.match(str(request.to)):
        return invalid("The parameter to is not a valid phone number.")
    kind = request.type or "text"  # Meta's default type
    if kind == "text":
        return _text_problem(request.text)
    if kind == "template":
        return _template_problem(request.template)
    if kind in _OTHER_TYPES:
        fields = _decode_types(body)
        return None if isinstance(fields.get(kind), dict) else missing(kind)
    return invalid(f"Parameter 'type' has an invalid value: {kind}")


def _text_problem(text: _Text | None) -> r.GraphError | None:
    if text is None:
        return missing("text")
    if not text.body:
        return missing("text['body']")
    if len(text.body) > MAX_BODY:
        return body_too_long()
    return None


def _template_problem(template: _Template | None) -> r.GraphError | None:
    if template is None:
        return missing("template")
    if not template.name:
        return missing("template['name']")
    if template.language is None or not template.language.code:
        return missing("template['language']")
    return None


class WaStats:
    """What the WhatsApp side saw since the start or the last reset."""

    __slots__ = ("last", "pair_violations", "reached", "sends", "spam_counts", "tier_violations")

    def __init__(self) -> None:
        # (unix time received, number, to, type) of every accepted send, the first MAX_SENDS
        self.sends: list[tuple[float, str, str, str]] = []
        self.last: dict[tuple[str, str], float] = {}  # (number, to) -> last accepted send
        # portfolio (a lone number: its id) -> person -> first reached within 24 h
        self.reached: dict[str, dict[str, float]] = {}
        self.spam_counts: dict[str, int] = {}  # number -> accepted sends (wa_spam_after)
        self.pair_violations = 0
        self.tier_violations = 0

    def snapshot(self) -> dict[str, object]:
        return {
            "sends": [list(send) for send in self.sends],
            "accepted": len(self.sends),
            "pair_violations": self.pair_violations,
            "tier_violations": self.tier_violations,
            "reached": {portfolio: len(people) for portfolio, people in self.reached.items()},
        }


class WhatsApp:
    """The WhatsApp side of one FakeGraph: its counters and the answer to a send."""

    def __init__(self, fake: FakeGraph) -> None:
        self._fake = fake
        self.stats = WaStats()
        self._count = 0
        self._clock: Callable[[], float] = time.time

    def reset(self) -> None:
        self.stats = WaStats()

    def send(self, number: str, token: str | None, body: bytes) -> Answer:
        fake = self._fake
        config = fake.config
        now = self._clock()
        this_second = fake.stats.tick(number, int(now))
        if now < config.outage_until:
            return fake._error(r.OUTAGE)
        if config.revoked:
            return fake._error(r.TOKEN_REVOKED)
        # With tokens configured, only the number's own token sends from it.
        if not token or (config.tokens and config.tokens.get(token) != number):
            return fake._error(r.TOKEN_INVALID)
        request = decode(body)
        if request is None:
            return fake._error(INVALID_BODY)
        refused = problem(request, body)
        if refused is not None:
            return fake._error(refused)
        to = str(request.to).removeprefix("+")
        refused = self._refusal(number, to, request, this_second, now)
        if refused is not None:
            fake.stats.refuse(str(refused.code), to)
            return fake._error(refused)
        return self._accept(number, to, request, body, now)

    def _refusal(
        self, number: str, to: str, request: WaSend, this_second: int, now: float
    ) -> r.GraphError | None:
        config = self._fake.config
        stats = self.stats
        if config.wa_throughput and this_second > config.wa_throughput:
            return THROUGHPUT
        if config.wa_spam_after and stats.spam_counts.get(number, 0) >= config.wa_spam_after:
            return SPAM
        last = stats.last.get((number, to))
        if (
            config.wa_pair_interval_s
            and last is not None
            and now - last < config.wa_pair_interval_s
        ):
            stats.pair_violations += 1
            return PAIR_LIMIT
        code = config.wa_errors.get(to)
        if code is not None:
            return INJECTABLE[code]
        if config.wa_enforce_window and (request.type or "text") != "template":
            opened = self._fake.last_message.get(to)
            if opened is None or now - opened > _DAY_S:
                return REENGAGEMENT
        if config.fail_rate and self._fake._draw() < config.fail_rate:
            return SOMETHING_WRONG
        return None

    def _accept(self, number: str, to: str, request: WaSend, body: bytes, now: float) -> Answer:
        fake = self._fake
        stats = self.stats
        kind = request.type or "text"
        stats.last[(number, to)] = now
        stats.spam_counts[number] = stats.spam_counts.get(number, 0) + 1
        self._reach(number, to, now)
        if len(stats.sends) < MAX_SENDS:
            stats.sends.append((now, number, to, kind))
        fake.stats.deliver(number, to)
        if request.text is not None and request.text.body is not None:
            fake.stats.remember_text(to, request.text.body)
        fake.stats.remember_body(to, body)
        self._count += 1
        wamid = f"wamid.{fake._message_prefix.decode()}{self._count}"
        if fake.webhooks is not None:
            fake.webhooks.wa_sent(number, to, wamid, request.biz_opaque_callback_data)
        answer = (200, success_body(str(request.to), to, wamid, kind == "template"))
        return fake._gone_bad(fake.config, answer)  # the bad-answer knobs, after acceptance

    def _reach(self, number: str, to: str, now: float) -> None:
        """A person with no open window, new in the number's moving 24 h, counts against the
        tier; beyond it Meta still accepts (no dedicated code), the fake counts a violation."""
        opened = self._fake.last_message.get(to)
        if opened is not None and now - opened <= _DAY_S:
            return  # a service window is open: free of the tier
        portfolio = self._fake.config.wa_portfolios.get(number, number)
        people = self.stats.reached.setdefault(portfolio, {})
        while people:  # oldest first: people are added in time order
            oldest = next(iter(people))
            if now - people[oldest] <= _DAY_S:
                break
            del people[oldest]
        if to in people:
            return
        people[to] = now
        tier = self._fake.config.wa_tier
        if tier and len(people) > tier:
            self.stats.tier_violations += 1
