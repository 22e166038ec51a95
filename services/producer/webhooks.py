"""Meta's webhooks in: ``GET /webhooks/messenger`` answers Meta's subscription check,
``POST /webhooks/messenger`` takes signed event batches; ``GET|POST /webhooks/whatsapp`` the
same for the WhatsApp Cloud API (same app secret and verify token; its entries carry
``c=whatsapp``).

A POST is answered 200 once its raw bytes are in the page's inbox stream (and, on a cluster,
on a replica), never after processing them: the consumers' stream engine does that
(services/consumer/events.py). Refusals write nothing: over 1 MiB is 413 before the body is
read, a missing or wrong ``X-Hub-Signature-256`` (the SHA-1 ``X-Hub-Signature`` alone counts as
none) is 401, a signed body that is not Meta's JSON is 400. Meta calls these routes, so no
bearer token; the app secret is the authentication.
Sources: https://developers.facebook.com/documentation/business-messaging/messenger-platform/webhooks
and https://developers.facebook.com/documentation/business-messaging/whatsapp/webhooks/create-webhook-endpoint
"""

from __future__ import annotations

import hmac
import logging
from typing import TypeVar

import msgspec
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from services.producer.common import state_of
from shared import keys, webhooks
from shared.errors import ApiError
from shared.providers import whatsapp_webhooks
from shared.redisconn import replicated

log = logging.getLogger("fanout.producer")
_MESSENGER = "/webhooks/messenger"
_WHATSAPP = "/webhooks/whatsapp"
_TOO_LARGE = ApiError(413, "body_too_large", f"a webhook body is at most {webhooks.MAX_BODY} bytes")


async def verify(request: Request) -> Response:
    """Meta's subscription check: echo ``hub.challenge`` when the verify token matches."""
    return _verify(request, _MESSENGER)


async def verify_whatsapp(request: Request) -> Response:
    """The same check for the WhatsApp product's callback URL (one verify token for both)."""
    return _verify(request, _WHATSAPP)


def _verify(request: Request, route: str) -> Response:
    request.scope["fanout.route"] = route
    params = request.query_params
    expected = state_of(request).settings.webhook_verify_token
    given = params.get("hub.verify_token", "")
    if (
        params.get("hub.mode") != "subscribe"
        or expected is None
        or not hmac.compare_digest(given.encode(), expected.reveal().encode())
    ):
        raise ApiError(
            403,
            "forbidden",
            "hub.verify_token does not match FANOUT_WEBHOOK_VERIFY_TOKEN",
            "hub.verify_token",
        )
    return PlainTextResponse(params.get("hub.challenge", ""))


T = TypeVar("T")


def _decode(decoder: msgspec.json.Decoder[T], body: bytes) -> T:
    """A webhook's head, or the 400/422 that says why Meta's JSON was not what we read."""
    try:
        return decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise ApiError(400, "invalid_json", f"not Meta's webhook JSON: {exc}") from None
    except msgspec.ValidationError as exc:
        raise ApiError(422, "invalid_field", str(exc)) from None


async def receive(request: Request) -> Response:
    body = await _signed(request, _MESSENGER)
    state = state_of(request)
    notification = _decode(webhooks.head_decoder, body)
    if notification.object != "page":
        raise ApiError(422, "invalid_field", 'object must be "page" (Messenger)', "object")
    shard = webhooks.inbox_shard(webhooks.page_of(notification), state.settings.shards)
    await _append(request, shard, {"b": body})
    return PlainTextResponse("EVENT_RECEIVED")


async def receive_whatsapp(request: Request) -> Response:
    """A WhatsApp Cloud API batch: checked as Messenger's, kept in the same inbox with its
    channel noted (services/consumer/wa_events.py applies it). The shard follows the WhatsApp
    Business Account, so one account's statuses share a stream."""
    body = await _signed(request, _WHATSAPP)
    state = state_of(request)
    head = _decode(whatsapp_webhooks.head_decoder, body)
    if head.object != whatsapp_webhooks.OBJECT:
        message = f'object must be "{whatsapp_webhooks.OBJECT}" (WhatsApp)'
        raise ApiError(422, "invalid_field", message, "object")
    account = head.entry[0].id if head.entry else ""
    shard = webhooks.inbox_shard(account, state.settings.shards)
    await _append(request, shard, {"b": body, "c": whatsapp_webhooks.CHANNEL})
    return PlainTextResponse("EVENT_RECEIVED")


async def _append(request: Request, shard: int, fields: dict[str, bytes | str]) -> None:
    """Into the shard's inbox, answered only once a replica has it too (on a cluster)."""
    redis = state_of(request).redis
    stream = keys.inbox(shard)
    await redis.xadd(stream, fields)  # type: ignore[arg-type]  # redis-py's FieldT is invariant
    await replicated(redis, stream)


async def _signed(request: Request, route: str) -> bytes:
    """The raw body, once its ``X-Hub-Signature-256`` holds for the app secret (else 401)."""
    request.scope["fanout.route"] = route
    state = state_of(request)
    body = await _read(request)
    secret = state.settings.app_secret
    header = request.headers.get(webhooks.SIGNATURE_HEADER)
    if secret is None or not webhooks.signature_ok(secret.reveal(), body, header):
        if header is None and "x-hub-signature" in request.headers:
            message = "only X-Hub-Signature (SHA-1) was sent: X-Hub-Signature-256 is required"
        else:
            message = "X-Hub-Signature-256 is missing or does not match the app secret"
        raise ApiError(401, "bad_signature", message, webhooks.SIGNATURE_HEADER)
    return body


async def _read(request: Request) -> bytes:
    length = request.headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise ApiError(400, "bad_request", "Content-Length is not a number", "Content-Length")
        if int(length) > webhooks.MAX_BODY:
            raise _TOO_LARGE
    parts: list[bytes] = []
    size = 0
    async for part in request.stream():
        size += len(part)
        if size > webhooks.MAX_BODY:
            raise _TOO_LARGE
        parts.append(part)
    return b"".join(parts)
