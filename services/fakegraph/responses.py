"""Graph API answers as ready bytes: HTTP framing, success bodies, errors in Graph's shape.

Every error the fake can give is built once at import as the two halves of its JSON body
around the `fbtrace_id`; answering is then two concatenations and one `%` format.
The texts are Meta's own (Send API and Graph API error references).
"""

from __future__ import annotations

import random
import string

import msgspec

_REASONS = {
    200: b"OK",
    400: b"Bad Request",
    404: b"Not Found",
    413: b"Payload Too Large",
    500: b"Internal Server Error",
    503: b"Service Unavailable",
}
_HEADS = {
    status: b"HTTP/1.1 %d %b\r\nContent-Type: application/json; charset=UTF-8\r\nContent-Length: "
    % (status, reason)
    for status, reason in _REASONS.items()
}

END_KEEP_ALIVE = b"\r\n\r\n"
"""Header end for HTTP/1.1 keep-alive (the default, nothing to say)."""
END_KEEP_ALIVE_10 = b"\r\nConnection: keep-alive\r\n\r\n"
"""Header end when the client asked for keep-alive out loud (HTTP/1.0 clients must)."""
END_CLOSE = b"\r\nConnection: close\r\n\r\n"
"""Header end when the server closes the connection after this answer."""


def frame(status: int, body: bytes, end: bytes = END_KEEP_ALIVE) -> bytes:
    """Status line, JSON content type, Content-Length, `end`, body."""
    return b"%b%d%b%b" % (_HEADS[status], len(body), end, body)


_json_encode = msgspec.json.Encoder().encode


def success_body(psid: str, message_prefix: bytes, message_number: int) -> bytes:
    """`{"recipient_id":"<psid>","message_id":"<prefix><number>"}`; the PSID JSON-escaped."""
    return b'{"recipient_id":%b,"message_id":"%b%d"}' % (
        _json_encode(psid),
        message_prefix,
        message_number,
    )


def json_body(value: object) -> bytes:
    """Encode a test-hook answer."""
    return _json_encode(value)


class TraceIds:
    """Random-looking 11-character `fbtrace_id`s, drawn from a pool made once."""

    __slots__ = ("_pool", "_next")

    def __init__(self, size: int = 4096) -> None:
        rng = random.Random()
        alphabet = string.ascii_letters + string.digits
        self._pool = ["".join(rng.choices(alphabet, k=11)).encode("ascii") for _ in range(size)]
        self._next = 0

    def take(self) -> bytes:
        n = self._next
        self._next = (n + 1) % len(self._pool)
        return self._pool[n]


_TRACE_MARK = "@FBTRACE@"


class GraphError:
    """One Graph error answer: HTTP status, Graph code, and its prebuilt JSON halves."""

    __slots__ = ("status", "code", "_head", "_tail")

    def __init__(
        self,
        status: int,
        code: int,
        message: str,
        *,
        subcode: int | None = None,
        transient: bool | None = None,
        details: str | None = None,
    ) -> None:
        self.status = status
        self.code = code
        error: dict[str, object] = {"message": message, "type": "OAuthException", "code": code}
        if subcode is not None:
            error["error_subcode"] = subcode
        if transient is not None:
            error["is_transient"] = transient
        if details is not None:
            # WhatsApp's errors say what went wrong here; Meta: build on code and details
            # (https://developers.facebook.com/documentation/business-messaging/whatsapp/support/error-codes)
            error["error_data"] = {"messaging_product": "whatsapp", "details": details}
        error["fbtrace_id"] = _TRACE_MARK
        self._head, self._tail = _json_encode({"error": error}).split(_TRACE_MARK.encode())

    def body(self, trace_id: bytes) -> bytes:
        return self._head + trace_id + self._tail


TOKEN_INVALID = GraphError(400, 190, "Invalid OAuth access token - Cannot parse access token")
TOKEN_REVOKED = GraphError(
    400,
    190,
    "Error validating access token: The session has been invalidated because the user "
    "changed their password or Facebook has changed the session for security reasons.",
    subcode=463,
)
INVALID_PARAMETER = GraphError(400, 100, "(#100) Invalid parameter")
NO_RECIPIENT = GraphError(400, 100, "(#100) The parameter recipient is required")
NO_MESSAGE = GraphError(400, 100, "(#100) Must send either message or sender action")
EMPTY_MESSAGE = GraphError(
    400, 100, "(#100) Message cannot be empty, must provide valid attachment or text"
)
BODY_TOO_LARGE = GraphError(413, 100, "(#100) The request body is too large")
MALFORMED_REQUEST = GraphError(400, 100, "(#100) Malformed HTTP request")
RATE_LIMITED = GraphError(400, 613, "(#613) Calls to this api have exceeded the rate limit.")
TRANSIENT = GraphError(
    500, 2, "An unexpected error has occurred. Please retry your request later.", transient=True
)
UNAVAILABLE = GraphError(400, 551, "(#551) This person isn't available right now.", subcode=1545041)
INTERNAL = GraphError(500, 1, "An unknown error has occurred.", transient=True)
# Graph API error handling (code 2, "Service temporarily unavailable"):
# https://developers.facebook.com/docs/graph-api/guides/error-handling
OUTAGE = GraphError(503, 2, "(#2) Service temporarily unavailable", transient=True)
# Messenger error codes, updated Jun 25, 2026:
# https://developers.facebook.com/documentation/business-messaging/messenger-platform/error-codes
PAGE_RESTRICTED = GraphError(
    400, 10, "(#10) You are temporarily restricted from sending messages", subcode=1893063
)
OUTSIDE_WINDOW = GraphError(
    400,
    10,
    "(#10) This message is sent outside of allowed window. Learn more about the new policy "
    "here: https://developers.facebook.com/docs/messenger-platform/policy-overview",
    subcode=2018278,
)
# A retired message tag: "Effective April 27th, 2026, all API requests containing the Message
# Tags CONFIRMED_EVENT_UPDATE, ACCOUNT_UPDATE, and POST_PURCHASE_UPDATE will receive error code
# 100" (https://developers.facebook.com/docs/messenger-platform/reference/send-api); the field
# saw "(#100) Invalid parameter" with subcode 1893061 (chatwoot/chatwoot#14669).
RETIRED_TAGS = frozenset({"ACCOUNT_UPDATE", "CONFIRMED_EVENT_UPDATE", "POST_PURCHASE_UPDATE"})
TAG_RETIRED = GraphError(400, 100, "(#100) Invalid parameter", subcode=1893061)


def unknown_path(path: str) -> GraphError:
    """The 404 for any route the fake does not serve (rare, so built on demand)."""
    return GraphError(404, 803, f"(#803) Some of the aliases you requested do not exist: {path}")


def bad_config(detail: str) -> GraphError:
    """The 400 for a `POST /_fake/config` body that does not fit `FakeGraphConfig`."""
    return GraphError(400, 100, f"(#100) {detail}")
