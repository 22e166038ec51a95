"""WhatsApp Cloud API: the send request for one recipient and the answer table.

    request_path(version, number)  /{version}/{phone_number_id}/messages
    WhatsAppRequest(job, message)  the body pre-split around ``to``: per recipient a few
                                   byte concatenations (personalised ones filled first)
    .body(to, values)              bytes, or the failed Decision of a message that breaks a
                                   limit once filled for this person
    .tagged(body, position)        + ``biz_opaque_callback_data`` (job + position, the same
                                   string Messenger sends as ``metadata``): Meta echoes it in
                                   the status webhooks, so receipts find the job
    wamid(body)                    ``messages[0].id`` of a success answer
    classify(result)               the answer -> ``shared.classify.Decision`` (table below)
    PROVIDER                       the contract (shared/providers/__init__.py) for
                                   ``"channel": "whatsapp"``

Send body (https://developers.facebook.com/docs/whatsapp/cloud-api/reference/messages):
``{"messaging_product":"whatsapp","recipient_type":"individual","to":"<digits>",
"type":"text"|"template","text"|"template":{...},"biz_opaque_callback_data":"fo1:<job>:<pos>"}``.
Success: ``{"messaging_product":"whatsapp","contacts":[{"input","wa_id"}],
"messages":[{"id":"wamid...."}]}``. Error (Graph's shape plus ``error_data``):
``{"error":{"message","type","code","error_data":{"messaging_product","details"},
"fbtrace_id"}}``. Meta: build on ``code`` (and ``details``), never on the title in
``message``, which "will eventually be deprecated".

The answer table, by code (WhatsApp uses no subcodes for these):

  code      verdict      what fanout does
  130429    throttled    throughput reached: the number cools down fleet-wide, person retried
  80007 4   throttled    the WABA's / the app's rate limit: as 130429
  131056    retry        pair rate limit: back off *this person* (``pace_person``), not the
                         number; retried after ``retry_after`` (at least the 6 s pair
                         interval; Meta's 4^X back-off is services/consumer/pairs.py's),
                         never counted against the number's health
  131048    restricted   spam rate limit: "restrictions on how many messages can be sent from
                         this phone number": every job of the number pauses with the reason
  368       restricted   temporarily blocked for policy violations: as 131048
  131031 131042
            restricted   the business account is locked / has a payment problem: nothing
                         the number sends can go until a person fixes it, so its jobs pause
                         (a user resumes them) instead of failing every recipient
  131026    failed       undeliverable (not on WhatsApp, old client, ...): suppressed on the
                         number's list
  131050    failed       the person stopped marketing messages: suppressed
  131047    failed       re-engagement: more than 24 h since the person wrote (a free-form
                         send outside the service window); code 131047 in the job's errors
  131049    failed       not delivered "to maintain healthy ecosystem engagement"
  190       fatal        access token invalid or expired: the number's job stops
  131005 131045 133010
            fatal        access denied, a certificate/registration error, the number not
                         registered on the Cloud API: no send of the job can succeed
  132000 132001 132012 132015 132016
            fatal        the template cannot be sent at all (parameter count, no such
                         template/language, parameter format, paused, disabled): every
                         recipient would fail the same way, so the job stops at once
  131000 131016 1 2, HTTP 5xx, timeouts, resets
            retry        transient, as for Messenger (the number's breaker watches them)
  anything else (100, 131008, 131009, ...)
            failed       with the provider's code

Sources:
  error codes  https://developers.facebook.com/documentation/business-messaging/whatsapp/support/error-codes
               (updated Jun 18, 2026; codes and titles as reproduced by PyWa and integrators,
               131049 and 131050 from integrators, see notes/messenger-2026.md section 2)
  throughput   https://developers.facebook.com/documentation/business-messaging/whatsapp/throughput
  pair limit   https://developers.facebook.com/documentation/business-messaging/whatsapp/about-the-platform
               ("1 message every 6 seconds to the same WhatsApp user ... error code 131056",
               retry after 4^X seconds)
  in practice  https://dev.to/wapgrowai_org/whatsapp-cloud-api-rate-limits-in-practice-throughput-pair-rate-messaging-limits-and-error-codes-1i7k
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import msgspec

from shared import keys, webhooks
from shared.classify import SENT, Decision, Verdict
from shared.messages import Personalised, RenderError
from shared.providers import JobFields, Rates, RecipientLimit, Upload, whatsapp_webhooks
from shared.providers.whatsapp_message import MAX_BODY, MAX_PARAMETER, WhatsAppMessage
from shared.providers.whatsapp_message import decode as decode_message
from shared.template import Template

if TYPE_CHECKING:
    from shared.provider import SendResult
    from shared.settings import ConsumerSettings, Secret

PAIR_INTERVAL_S = 6.0  # Meta: 1 message every 6 seconds to the same WhatsApp user

THROTTLE_CODES = frozenset({130429, 80007, 4})
TRANSIENT_CODES = frozenset({131000, 131016, 1, 2})
PAIR_CODE = 131056
SUPPRESS_CODES = frozenset({131026, 131050})
# The job cannot go on: the token, the number's registration, or a template no recipient can
# be sent.
FATAL_CODES = frozenset({190, 131005, 131045, 133010, 132000, 132001, 132012, 132015, 132016})
# The number is held back by Meta or its account: every job of the number pauses with the
# reason.
PAUSE_CODES = frozenset({131048, 368, 131031, 131042})
# Rows whose verdict is "failed" by name (anything unlisted fails too); listed so the table
# above, the tests and this module say the same thing.
FAILED_CODES = frozenset({131026, 131050, 131047, 131049})

_json = msgspec.json.Encoder().encode


def request_path(version: str, phone_number_id: str) -> str:
    """``/{version}/{phone_number_id}/messages``: the number is in the path, its token in the
    Authorization header (never in the URL, so no access log carries it)."""
    return f"/{version}/{phone_number_id}/messages"


class _NotSimple(Exception):
    """A placeholder sits where more than a length limit applies (a link, an id, a name)."""


# Strings whose only limit is their length: a filled one needs no full re-check of the message.
_FAST_FIELDS = {"body": MAX_BODY, "text": MAX_PARAMETER}
_HOLE = re.compile(rb'"\\u0000fo([0-9]+)\\u0000"')


class _Splice:
    """A personalised message as its JSON split around its placeholders, when every placeholder
    sits in ``text.body`` or a text parameter: per recipient a join of the segments and the
    JSON-encoded filled strings (a few microseconds; the full fill and re-check costs tens).
    ``render`` gives None when a filled string breaks its length limit: the caller then takes
    the full path, whose RenderError names the field."""

    __slots__ = ("_holes", "_limits", "_templates")

    def __init__(self, message: WhatsAppMessage) -> None:
        self._templates: list[Template] = []
        self._limits: list[int] = []
        if b"\\u0000" in _json(message):
            raise _NotSimple("a NUL in the message itself")  # it could pass for a hole
        tree = self._walk(msgspec.to_builtins(message), "", {})
        parts = _HOLE.split(_json(tree))
        # [segment, hole, segment, hole, ..., segment]: holes as their template's index
        self._holes = (parts[0], [(int(parts[i]), parts[i + 1]) for i in range(1, len(parts), 2)])

    def _walk(self, node: Any, key: str, parent: dict[str, Any]) -> Any:
        if isinstance(node, dict):
            return {k: self._walk(v, k, node) for k, v in node.items()}
        if isinstance(node, list):
            return [self._walk(v, key, parent) for v in node]
        if not isinstance(node, str):
            return node
        template = Template.parse(node)
        if not template.personal:
            return node
        if key not in _FAST_FIELDS or (key == "text" and parent.get("type") != "text"):
            raise _NotSimple(key)
        self._templates.append(template)
        self._limits.append(_FAST_FIELDS[key])
        return f"\x00fo{len(self._templates) - 1}\x00"

    def render(self, values: Mapping[str, str]) -> bytes | None:
        first, holes = self._holes
        out = [first]
        for index, segment in holes:
            text = self._templates[index].render(values)
            if not 0 < len(text) <= self._limits[index]:
                return None
            out.append(_json(text))
            out.append(segment)
        return b"".join(out)


def _splice_of(message: WhatsAppMessage) -> _Splice | None:
    try:
        return _Splice(message)
    except _NotSimple:
        return None  # every recipient takes the full fill and check


class WhatsAppRequest:
    """What every send of one job shares, the body pre-split around the recipient's digits.

    ``message`` is the job's WhatsApp message Struct (shared/providers/whatsapp_message.py):
    exactly one of ``text`` or ``template``, whose JSON is Meta's object as it goes in the
    body. A message without placeholders is encoded once. A personalised one whose placeholders
    all sit in text (``text.body``, text parameters) is a join of JSON segments around the
    filled strings, each checked against its length limit (``_Splice``); any other is filled
    per recipient and checked against the message's limits again (``Personalised``). Both give
    the same bytes (tests/test_whatsapp_answers.py); bench/whatsapp_render.py times them."""

    __slots__ = (
        *("_meta", "_personalised", "_prefix", "_splice", "_suffix", "_type"),
        *("job_id", "message"),
    )

    def __init__(self, job_id: str, message: WhatsAppMessage, personal: bool = False) -> None:
        self.job_id = job_id
        self.message = message
        self._type = b',"type":"' + message.type.encode() + b'",'
        self._prefix = b'{"messaging_product":"whatsapp","recipient_type":"individual","to":'
        self._personalised = Personalised(message) if personal else None
        self._splice = _splice_of(message) if personal else None
        # '"text":{...}}': the message's one field, closing the body's object
        self._suffix = self._type + _json(message)[1:]
        self._meta = webhooks.metadata(job_id, 0)[:-1].encode()  # "fo1:<job>:"

    def body(self, to: str, values: Mapping[str, str] | None) -> bytes | Decision:
        """The send body for one recipient (E.164 digits), or the failure of a message that
        breaks one of its limits once filled for them."""
        suffix = self._suffix
        if self._personalised is not None:
            filled = None if self._splice is None else self._splice.render(values or {})
            if filled is None:
                try:
                    filled = self._personalised.render_json(values or {})
                except RenderError as exc:
                    return Decision("failed", exc.code, "", exc.message)
            suffix = self._type + filled[1:]
        return self._prefix + _json(to) + suffix

    @property
    def has_fallback(self) -> bool:
        return False  # outside the window WhatsApp takes a template: the job's own message

    def fallback_body(self, to: str) -> bytes:
        raise RuntimeError(f"WhatsApp job {self.job_id} has no fallback message")

    def tagged(self, body: bytes, position: int) -> bytes:
        """The body with ``biz_opaque_callback_data`` naming job and recipient, which Meta
        hands back in every status webhook of the message; job ids and positions need no JSON
        escaping."""
        return b'%s,"biz_opaque_callback_data":"%s%d"}' % (body[:-1], self._meta, position)


# ---- answers ----


class _MessageId(msgspec.Struct):
    id: str = ""


class _Success(msgspec.Struct):
    messages: list[_MessageId] = []


_success = msgspec.json.Decoder(_Success)


def wamid(body: bytes) -> str | None:
    """The WhatsApp message id (``messages[0].id``) of a success answer, None if absent."""
    try:
        answer = _success.decode(body)
    except msgspec.MsgspecError:
        return None
    return answer.messages[0].id or None if answer.messages else None


def classify(result: SendResult) -> Decision:
    """What to do with one WhatsApp answer (the table in the module docstring)."""
    answer = result.answer
    if answer is None:
        # No answer (timeout, reset) or one that is not Graph JSON (a proxy's HTML page).
        if 200 <= result.status < 300:
            return SENT  # accepted; only the body was odd
        if result.status == 0 or result.status >= 500 or result.status == 429:
            return Decision("retry", result.transport_error or f"http_{result.status}")
        return Decision("failed", f"http_{result.status}", "", "unreadable provider answer")
    error = answer.error
    if error is None:
        if 200 <= result.status < 300:
            return SENT
        verdict: Verdict = "retry" if result.status >= 500 or result.status == 429 else "failed"
        return Decision(verdict, f"http_{result.status}", "", f"HTTP {result.status}")
    message = error.message
    data = error.error_data
    details = data.get("details") if isinstance(data, dict) else data
    if isinstance(details, str) and details and details not in message:
        message = f"{message}: {details}"  # the title alone is vague ("Message undeliverable")
    return decide(error.code, message, result.status, result.retry_after, error.is_transient)


def decide(
    code: int,
    message: str = "",
    status: int = 400,
    retry_after: float | None = None,
    transient: bool = False,
) -> Decision:
    """The verdict for WhatsApp error ``code`` (also what the status webhooks' ``errors[]``
    carry, so the receiving side can name the same codes)."""
    text = str(code)
    if code == PAIR_CODE:
        wait = max(retry_after or 0.0, PAIR_INTERVAL_S)
        return Decision("retry", text, "", message, wait, pace_person=True)
    if code in THROTTLE_CODES or status == 429:
        return Decision("throttled", text, "", message, retry_after)
    if code in PAUSE_CODES:
        return Decision("restricted", text, "", message)
    if code in FATAL_CODES:
        return Decision("fatal", text, "", message)
    if code in TRANSIENT_CODES or transient or status >= 500:
        return Decision("retry", text, "", message, retry_after)
    return Decision("failed", text, "", message, suppress=code in SUPPRESS_CODES)


# ---- the contract ----


def _message(message: msgspec.Struct) -> WhatsAppMessage:
    if not isinstance(message, WhatsAppMessage):
        raise TypeError(f"a WhatsApp job holds a WhatsApp message, not {type(message)}")
    return message


class WhatsApp:
    channel = "whatsapp"
    sender_field = "phone_number_id"
    webhook_path = "/webhooks/whatsapp"

    def decode_message(self, raw: bytes) -> WhatsAppMessage:
        return decode_message(raw)

    def token(self, settings: ConsumerSettings, sender: str) -> Secret | None:
        return settings.wa_tokens.get(sender)

    def path(self, version: str, sender: str) -> str:
        return request_path(version, sender)

    async def prepare(self, message: msgspec.Struct, upload: Upload) -> WhatsAppMessage:
        # Media go by ``link`` (Meta fetches it) or by an id uploaded beforehand: nothing to
        # upload per job.
        return _message(message)

    def is_media(self, message: msgspec.Struct) -> bool:
        return False  # one throughput per number, whatever the message carries

    def request(self, job_id: str, fields: JobFields) -> WhatsAppRequest:
        return WhatsAppRequest(job_id, _message(fields.message), fields.personal)

    def classify(self, result: SendResult) -> Decision:
        return classify(result)

    def rates(self, settings: ConsumerSettings) -> Rates:
        # Meta counts mps per second: strict pacing, no burst (services/consumer/limiter.py).
        return Rates(settings.wa_rate_limit, settings.wa_rate_limits, strict=True)

    def recipient_limit(self, settings: ConsumerSettings) -> RecipientLimit | None:
        return RecipientLimit(keys.wa_pair, round(settings.wa_pair_interval_s * 1000))

    def decode_webhook(self, body: bytes) -> whatsapp_webhooks.Notification:
        return whatsapp_webhooks.notification_decoder.decode(body)


PROVIDER = WhatsApp()
