"""The fake Send API itself: routes, the checks of a send, and the `/_fake/*` test hooks.

`FakeGraph.respond()` takes one parsed HTTP request and gives `(status, body)`; it knows
nothing of sockets (see `protocol.py`). A send is checked in Graph's order:

    outage (503, code 2) -> token / revoked (190) -> body (100; a retired tag 100/1893061)
    -> rate limit (613)
    -> attachment (audio/video limit 613, unknown attachment_id 100; attachments.py)
    -> fail_rate (500, code 2) -> ambiguous (500, code 2) -> restricted page (10/1893063)
    -> window (10/2018278)
    -> blocked (551) -> delivered (200) -> the answer spoilt at the bad-answer rates (HTML
    502, non-JSON 200, cut mid-body, never sent), the message delivered all the same

A body naming ``messaging_product`` (or an id in ``wa_numbers``) is a WhatsApp Cloud API send,
answered by whatsapp.py in WhatsApp's order and shapes.

The page of a send is the one its token maps to when `tokens` is set, else the URL's
(`me` for `/me/messages`); stats, deliveries and the rate limit are kept per page.
Every send is counted in the per-page, per-second load (whatever its answer) when it
arrives; a delivery is counted when the fake decides to accept it, so with `latency_ms`
a client that gives up before the answer still got its message through — exactly the
read-timeout-after-accept case that makes real duplicates.
"""

from __future__ import annotations

import asyncio
import random
import string
import time
import zlib
from collections.abc import Callable
from urllib.parse import unquote_to_bytes

import msgspec

from services.fakegraph import responses as r
from services.fakegraph.attachments import Attachments, upload_token_of_body
from services.fakegraph.config import FakeGraphConfig, redacted
from services.fakegraph.stats import Stats
from services.fakegraph.webhooks import Emitter, Enforcement, Inbound, WaInbound, WaQuality
from services.fakegraph.whatsapp import WhatsApp, is_whatsapp

_HASH_SPACE = 2**32
_WINDOW_S = 24 * 3600  # the standard messaging window


class _Recipient(msgspec.Struct):
    id: str | int | None = None


class _Message(msgspec.Struct):
    text: str | None = None
    attachment: msgspec.Raw = msgspec.Raw()
    template: msgspec.Raw = msgspec.Raw()  # a utility template (messaging_type UTILITY)


class _SendRequest(msgspec.Struct):
    """The Send API body; unknown fields (quick replies, metadata, ...) are ignored."""

    recipient: _Recipient | None = None
    message: _Message | None = None
    messaging_type: str | None = None
    tag: str | None = None
    access_token: str | None = None
    metadata: str | None = None  # handed back in the echo (webhooks.py)


Answer = tuple[int, bytes]
"""HTTP status and JSON body."""

# Statuses of answers gone bad after the message was delivered (never sent as such):
HTML_502 = -502  # a proxy's HTML "502 Bad Gateway" page
GARBLED_200 = -200  # HTTP 200 with a body that is not JSON
CUT = -1  # the head and half the body, then the connection is closed
HANG = -2  # no answer at all; the connection stays open


class FakeGraph:
    """Live config, stats, and the answer to every request."""

    def __init__(self, config: FakeGraphConfig) -> None:
        self.config = config
        self.stats = Stats()
        self.attachments = Attachments()
        self.connections: set[asyncio.BaseTransport] = set()
        """Open client connections (the protocol adds and removes itself)."""
        self._decode_send = msgspec.json.Decoder(_SendRequest).decode
        self._decode_patch = msgspec.json.Decoder(dict[str, object]).decode
        self._traces = r.TraceIds()
        self._rng = random.Random(config.seed)
        self._rng_seed = config.seed
        prefix = "".join(random.choices(string.ascii_letters + string.digits, k=12))
        self._message_prefix = b"m_" + prefix.encode("ascii")
        self._message_count = 0
        self._blocked_list: list[str] | None = None
        self._blocked_len = 0
        self._blocked_set: frozenset[str] = frozenset()
        self.webhooks: Emitter | None = None
        """Meta's side of the webhooks, when fakegraph runs with --webhook-url."""
        self.last_message: dict[str, float] = {}
        """PSID (or WhatsApp digits) -> Unix time of the person's last message to the page
        (`enforce_window`, `wa_enforce_window`, WhatsApp's tier); fed by `POST /_fake/window`
        and `/_fake/inbound`, kept across `reset()`."""
        self.whatsapp = WhatsApp(self)
        """The WhatsApp Cloud API's side (whatsapp.py)."""

    # ---- public helpers (tests in-process, the CLI) ----

    def configure(self, /, **fields: object) -> FakeGraphConfig:
        """Validate and apply a subset of config fields in place; return the config.

        Raises `msgspec.ValidationError` (unknown field, wrong type, out of range) and
        then changes nothing.
        """
        merged = msgspec.structs.asdict(self.config) | fields
        checked = msgspec.convert(merged, FakeGraphConfig)
        for name in fields:
            setattr(self.config, name, getattr(checked, name))
        return self.config

    def reset(self) -> None:
        """Forget all stats (the rate limiter's counts too) and re-seed `fail_rate` draws."""
        self.stats = Stats()
        self.attachments = Attachments()
        self.whatsapp.reset()
        self._rng.seed(self.config.seed)
        self._rng_seed = self.config.seed

    def close_connections(self) -> None:
        """Close every open client connection (shutdown; `Server.close()` leaves them)."""
        for transport in list(self.connections):
            transport.close()

    # ---- the request path ----

    def respond(
        self, method: bytes, url: bytes, authorization: bytes | None, body: bytes
    ) -> Answer:
        """Answer one request. `url` is the raw request target, `authorization` the header."""
        path, _, query = url.partition(b"?")
        if method == b"POST":
            page = _page_of(path, b"/messages")
            if page is not None and (page in self.config.wa_numbers or is_whatsapp(body)):
                return self.whatsapp.send(page, _token(authorization, query, None), body)
            if page is not None:
                return self._send(page, authorization, query, body)
            page = _page_of(path, b"/message_attachments")
            if page is not None:
                return self._upload(page, authorization, query, body)
        if path == b"/_fake/attachments" and method == b"GET":
            return 200, r.json_body(self.attachments.snapshot())
        if path.startswith(b"/_fake/"):
            return self._hook(method, path, body)
        return self.answer_error(r.unknown_path(path.decode("utf-8", "replace")))

    def _send(
        self, url_page: str, authorization: bytes | None, query: bytes, body: bytes
    ) -> Answer:
        config = self.config
        try:
            request: _SendRequest | None = self._decode_send(body)
        except msgspec.MsgspecError:
            request = None
        token = _token(authorization, query, request)
        page = config.tokens.get(token) if config.tokens and token else url_page
        now = time.time()
        this_second = self.stats.tick(page or url_page, int(now))

        if now < config.outage_until:
            return self._error(r.OUTAGE)
        if config.revoked:
            return self._error(r.TOKEN_REVOKED)
        if page is None or not token:
            return self._error(r.TOKEN_INVALID)
        if request is None:
            return self._error(r.INVALID_PARAMETER)
        psid, problem = _recipient_and_problem(request)
        if problem is not None:
            return self._error(problem)
        limited = self._limited(config, page, request, this_second, now)
        if limited is not None:
            return self._error(limited)
        if config.fail_rate and self._draw() < config.fail_rate:
            return self._error(r.TRANSIENT)
        refusal = self._refusal(config, page, request, psid, now)
        if refusal is not None:
            return refusal
        if (config.blocked or config.blocked_rate) and self._is_blocked(config, psid):
            return self._error(r.UNAVAILABLE)

        self.stats.deliver(page, psid)
        if request.message is not None and request.message.text is not None:
            self.stats.remember_text(psid, request.message.text)
        self.stats.remember_body(psid, body)
        self._message_count += 1
        self._announce(page, psid, request.metadata)
        return self._gone_bad(
            config, (200, r.success_body(psid, self._message_prefix, self._message_count))
        )

    def _announce(self, page: str, psid: str, metadata: str | None) -> None:
        """With --webhook-url: the echo and receipts of the message just delivered."""
        if self.webhooks is not None:
            mid = f"{self._message_prefix.decode()}{self._message_count}"
            self.webhooks.sent(page, psid, mid, metadata)

    def _gone_bad(self, config: FakeGraphConfig, answer: Answer) -> Answer:
        """A delivered send's answer, spoilt at the configured rates (the protocol frames the
        CUT, HANG and HTML statuses)."""
        rates = (
            (config.html_502_rate, HTML_502),
            (config.garbled_200_rate, GARBLED_200),
            (config.cut_rate, CUT),
            (config.hang_rate, HANG),
        )
        if not any(rate for rate, _ in rates):
            return answer
        draw = self._draw()
        for rate, status in rates:
            if draw < rate:
                return status, answer[1]
            draw -= rate
        return answer

    def _limited(
        self,
        config: FakeGraphConfig,
        page: str,
        request: _SendRequest,
        this_second: int,
        now: float,
    ) -> r.GraphError | None:
        """The page's send limit, then what the attachment carries (the media limit, a URL
        fetched, an attachment id that must be the page's)."""
        if config.rate_limit and this_second > config.rate_limit:
            return r.RATE_LIMITED
        if request.message is None:
            return None
        return self.attachments.check_send(page, request.message.attachment, now, config)

    def _upload(
        self, url_page: str, authorization: bytes | None, query: bytes, body: bytes
    ) -> Answer:
        """The Attachment Upload API (see attachments.py); the token checked as for a send."""
        config = self.config
        token = _token(authorization, query, None) or upload_token_of_body(body)
        page = config.tokens.get(token) if config.tokens and token else url_page
        if time.time() < config.outage_until:
            return self.answer_error(r.OUTAGE)
        if config.revoked:
            return self.answer_error(r.TOKEN_REVOKED)
        if page is None or not token:
            return self.answer_error(r.TOKEN_INVALID)
        answer = self.attachments.upload(page, body, config)
        return self.answer_error(answer) if isinstance(answer, r.GraphError) else answer

    def _error(self, error: r.GraphError) -> Answer:
        """A send's error answer, counted in `by_code`."""
        self.stats.answered(error.code)
        return error.status, error.body(self._traces.take())

    def answer_error(self, error: r.GraphError) -> Answer:
        """An error answer outside the send route, not counted (also used by the protocol)."""
        return error.status, error.body(self._traces.take())

    def _draw(self) -> float:
        if self.config.seed != self._rng_seed:
            self._rng.seed(self.config.seed)
            self._rng_seed = self.config.seed
        return self._rng.random()

    def _refusal(
        self, config: FakeGraphConfig, page: str, request: _SendRequest, psid: str, now: float
    ) -> Answer | None:
        """An ambiguous code 2, a restricted page, or a person outside the window, counted per
        recipient."""
        if config.ambiguous and psid in config.ambiguous:
            self.stats.refuse("2", psid)
            return self._error(r.TRANSIENT)
        if page in config.restricted_pages:
            self.stats.refuse("10/1893063", psid)
            return self._error(r.PAGE_RESTRICTED)
        if config.enforce_window and self._outside_window(request, psid, now):
            self.stats.refuse("10/2018278", psid)
            return self._error(r.OUTSIDE_WINDOW)
        return None

    def _outside_window(self, request: _SendRequest, psid: str, now: float) -> bool:
        if request.messaging_type not in (None, "RESPONSE", "UPDATE"):
            return False
        last = self.last_message.get(psid)
        return last is None or now - last > _WINDOW_S

    def _is_blocked(self, config: FakeGraphConfig, psid: str) -> bool:
        blocked = config.blocked
        if blocked:
            if blocked is not self._blocked_list or len(blocked) != self._blocked_len:
                self._blocked_list, self._blocked_len = blocked, len(blocked)
                self._blocked_set = frozenset(blocked)
            if psid in self._blocked_set:
                return True
        rate = config.blocked_rate
        return bool(rate) and zlib.crc32(psid.encode()) < rate * _HASH_SPACE

    # ---- test hooks ----

    def _hook(self, method: bytes, path: bytes, body: bytes) -> Answer:
        read = self._reads().get(path) if method == b"GET" else None
        if read is not None:
            return 200, r.json_body(read())
        if path == b"/_fake/window":
            if method == b"GET":
                return 200, r.json_body(self.last_message)
            if method == b"POST":
                return self._post_window(body)
        if path in _WEBHOOK_HOOKS:
            return self._webhook_hook(method, path, body)
        if path == b"/_fake/reset" and method == b"POST":
            self.reset()
            return 200, r.json_body(self.stats.snapshot(int(time.time())))
        if path == b"/_fake/config":
            if method == b"GET":
                return 200, r.json_body(redacted(self.config))
            if method == b"POST":
                return self._post_config(body)
        return self.answer_error(r.unknown_path(path.decode("utf-8", "replace")))

    def _reads(self) -> dict[bytes, Callable[[], object]]:
        """The read-only hooks: what the fake saw."""
        stats = self.stats
        return {
            b"/_fake/stats": lambda: stats.snapshot(int(time.time())),
            b"/_fake/delivered": lambda: stats.deliveries,
            b"/_fake/texts": lambda: stats.texts,
            b"/_fake/bodies": stats.sent_bodies,
            b"/_fake/refused": lambda: stats.refused,
            b"/_fake/whatsapp": self.whatsapp.stats.snapshot,
        }

    def _webhook_hook(self, method: bytes, path: bytes, body: bytes) -> Answer:
        """GET /_fake/receipts (what was reported), POST /_fake/inbound
        ({"page_id", "psids", "text"}: people message the page), POST /_fake/enforcement
        ({"page_id", "action", "reason"}), POST /_fake/webhooks (delays and rates, live)."""
        emitter = self.webhooks
        if emitter is None:
            return self.answer_error(r.bad_config("fakegraph runs without --webhook-url"))
        try:
            if path == b"/_fake/receipts" and method == b"GET":
                return 200, r.json_body(emitter.snapshot())
            if path == b"/_fake/webhooks" and method == b"POST":
                emitter.configure(body)
                return 200, r.json_body(msgspec.structs.asdict(emitter.config))
            if path == b"/_fake/inbound" and method == b"POST":
                inbound = msgspec.json.decode(body, type=Inbound)
                now = time.time()
                self.last_message.update(dict.fromkeys(inbound.psids, now))
                sent = emitter.inbound(inbound.page_id, inbound.psids, inbound.text)
                return 200, r.json_body({"events": sent})
            if path == b"/_fake/replay" and method == b"POST":
                return 200, r.json_body({"posts": emitter.replay()})
            if path == b"/_fake/enforcement" and method == b"POST":
                enforcement = msgspec.json.decode(body, type=Enforcement)
                emitter.enforcement(enforcement.page_id, enforcement.action, enforcement.reason)
                return 200, r.json_body({"events": 1})
            if method == b"POST" and path in (b"/_fake/wa_inbound", b"/_fake/wa_quality"):
                return self._wa_hook(emitter, path, body)
        except msgspec.MsgspecError as exc:
            return self.answer_error(r.bad_config(str(exc)))
        return self.answer_error(r.unknown_path(path.decode("utf-8", "replace")))

    def _wa_hook(self, emitter: Emitter, path: bytes, body: bytes) -> Answer:
        """POST /_fake/wa_inbound ({"phone_number_id", "people", "text"}: people write to the
        number, their window opens) and /_fake/wa_quality ({"phone_number_id", "event",
        "current_limit"}); raises msgspec errors for a bad body."""
        if emitter.wa_url is None:
            return self.answer_error(r.bad_config("fakegraph runs without --wa-webhook-url"))
        if path == b"/_fake/wa_inbound":
            inbound = msgspec.json.decode(body, type=WaInbound)
            self.last_message.update(dict.fromkeys(inbound.people, time.time()))
            sent = emitter.wa_inbound(inbound.phone_number_id, inbound.people, inbound.text)
            return 200, r.json_body({"events": sent})
        quality = msgspec.json.decode(body, type=WaQuality)
        emitter.wa_quality(quality.phone_number_id, quality.event, quality.current_limit)
        return 200, r.json_body({"events": 1})

    def _post_window(self, body: bytes) -> Answer:
        """Merge `{"<psid>": <Unix time of their last message>, ...}` into the window table."""
        try:
            self.last_message.update(_decode_window(body or b"{}"))
        except msgspec.MsgspecError as exc:
            return self.answer_error(r.bad_config(str(exc)))
        return 200, r.json_body({"people": len(self.last_message)})

    def _post_config(self, body: bytes) -> Answer:
        try:
            patch = self._decode_patch(body or b"{}")
            self.configure(**patch)
        except msgspec.MsgspecError as exc:
            return self.answer_error(r.bad_config(str(exc)))
        return 200, r.json_body(redacted(self.config))


_decode_window = msgspec.json.Decoder(dict[str, float]).decode
_WEBHOOK_HOOKS = (
    *(b"/_fake/receipts", b"/_fake/inbound", b"/_fake/enforcement"),
    *(b"/_fake/webhooks", b"/_fake/replay", b"/_fake/wa_inbound", b"/_fake/wa_quality"),
)


def _page_of(path: bytes, suffix: bytes) -> str | None:
    """The page of /{version}/{page}<suffix> or, as Graph allows, /{page}<suffix>."""
    if not path.endswith(suffix):
        return None
    parts = path.split(b"/")
    if (len(parts) == 4 and parts[1][:1] == b"v") or len(parts) == 3:
        return parts[-2].decode("utf-8", "replace") or None
    return None


def _token(authorization: bytes | None, query: bytes, request: _SendRequest | None) -> str | None:
    """The access token: `Authorization: Bearer`, else `?access_token=`, else the body's."""
    if authorization is not None:
        if authorization[:7] == b"Bearer " and len(authorization) > 7:  # the usual form
            return authorization[7:].strip().decode("utf-8", "replace") or None
        scheme, _, credentials = authorization.strip().partition(b" ")
        if scheme.lower() in (b"bearer", b"oauth") and credentials.strip():
            return credentials.strip().decode("utf-8", "replace")
    if query:
        for pair in query.split(b"&"):
            if pair.startswith(b"access_token="):
                value = unquote_to_bytes(pair[13:].replace(b"+", b" "))
                return value.decode("utf-8", "replace") or None
    if request is not None:
        return request.access_token or None
    return None


def _recipient_and_problem(request: _SendRequest) -> tuple[str, r.GraphError | None]:
    """The PSID, or the code-100 error of a body that lacks a recipient or a message."""
    recipient = request.recipient
    if recipient is None or recipient.id is None or recipient.id == "":
        return "", r.NO_RECIPIENT
    message = request.message
    if message is None:
        return "", r.NO_MESSAGE
    if not message.text and _absent(message.attachment) and _absent(message.template):
        return "", r.EMPTY_MESSAGE
    if request.tag in r.RETIRED_TAGS:
        return "", r.TAG_RETIRED
    psid = recipient.id
    return (psid if isinstance(psid, str) else str(psid)), None


def _absent(raw: msgspec.Raw) -> bool:
    """An attachment field that was missing or JSON `null`."""
    return len(raw) == 0 or bytes(raw) == b"null"
