"""What a submit must pass before anything is written: the body within its limit, valid JSON
of the right shape, the rules Meta adds (lanes and tags, limits, placeholders), and the headers and
query parameters that shape the job (Idempotency-Key, ?wait=, send_at)."""

from __future__ import annotations

import asyncio
import re
import time
from datetime import datetime
from typing import TypeVar

import msgspec
from starlette.requests import Request

from shared import messages
from shared.callbacks import check_target
from shared.errors import ApiError
from shared.messages import M, Personalised, RenderError
from shared.models import (
    JobRequest,
    Message,
    UploadSpec,
    WhatsAppUploadSpec,
    job_request_decoder,
    json_encode,
)
from shared.settings import ProducerSettings

T = TypeVar("T")

_MAX_METADATA = 4096


async def read_body(request: Request, limit: int) -> bytes:
    too_large = ApiError(
        413, "body_too_large", f"request body exceeds the limit of {limit} bytes (FANOUT_MAX_BODY)"
    )
    length = request.headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise ApiError(400, "bad_request", "Content-Length is not a number")
        if int(length) > limit:
            raise too_large
    parts: list[bytes] = []
    size = 0
    async for part in request.stream():
        size += len(part)
        if size > limit:
            raise too_large
        parts.append(part)
    return b"".join(parts)


_AT = re.compile(r"at `\$\.?([^`]*)`")
_NAMED = re.compile(r"(?:unknown|missing required) field `([^`]*)`")


def _field_of(message: str) -> str | None:
    """The JSON path msgspec names, as ``message.text`` or ``recipients[3]``."""
    at = _AT.search(message)
    named = _NAMED.search(message)
    parts = [p for p in (at.group(1) if at else "", named.group(1) if named else "") if p]
    return ".".join(parts) or None


# Fields of the other channel (unknown to this channel's Struct): said plainly, not as
# "unknown field". Messenger's lanes and window do not exist on WhatsApp, nor its number here.
_OTHER_CHANNEL = {
    "phone_number_id": 'phone_number_id names a WhatsApp number: add "channel": "whatsapp"'
    " (a Messenger job names its page in page_id)",
    "tier": 'tier is a WhatsApp job\'s choice: add "channel": "whatsapp"',
    "page_id": "a WhatsApp job names its number in phone_number_id, not page_id",
    "messaging_type": "a WhatsApp job has no messaging_type: a template reaches people outside"
    " the 24-hour service window, a text only those inside it",
    "tag": "a WhatsApp job has no tag: outside the 24-hour service window send an approved"
    " template (message.template)",
    "window": "a WhatsApp job has no window rule: a text to someone outside the 24-hour service"
    " window fails with 131047; a template reaches them",
    "fallback": "a WhatsApp job has no fallback: send a template (message.template), which"
    " reaches people outside the 24-hour service window",
}


def decode(body: bytes, decoder: msgspec.json.Decoder[T], prefix: str = "") -> T:
    """Decode a JSON body; 400 if it is not JSON, 422 naming the field if it is the wrong shape."""
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        text = str(exc)
        field = _field_of(text)
        if text.startswith("Object contains unknown field") and field in _OTHER_CHANNEL:
            text = _OTHER_CHANNEL[field]
        where = f"{prefix}.{field}" if prefix and field else prefix or field
        raise ApiError(422, "invalid_field", text, where) from None
    except msgspec.DecodeError as exc:
        message = f"{prefix or 'request body'} is not valid JSON: {exc}"
        raise ApiError(400, "invalid_json", message, prefix or None) from None


def decode_job(body: bytes) -> JobRequest:
    return decode(body, job_request_decoder)


def check_spec(
    spec: UploadSpec, settings: ProducerSettings, recipients: int | None = None
) -> Personalised[Message]:
    """The rules every job must meet, whatever carries its recipients (``recipients``: their
    count, None while a CSV is still unread); returns the message with its placeholders."""
    messages.check_lane(spec.messaging_type, spec.tag, spec.message, recipients)
    if spec.page_id not in settings.page_ids:
        raise ApiError(
            422, "unknown_page", f"page {spec.page_id} has no configured page token", "page_id"
        )
    check_fallback(spec, recipients)
    if spec.metadata is not None and len(json_encode(spec.metadata)) > _MAX_METADATA:
        raise ApiError(
            422, "invalid_field", f"metadata exceeds {_MAX_METADATA} bytes as JSON", "metadata"
        )
    return Personalised(spec.message)


def check_fallback(spec: UploadSpec, recipients: int | None) -> None:
    """A fallback is a UTILITY template for people outside the window of a RESPONSE or UPDATE
    job, so it needs the window checked; its placeholders take their defaults."""
    if spec.fallback is None:
        return
    if spec.messaging_type not in ("RESPONSE", "UPDATE"):
        message = "a fallback is for RESPONSE and UPDATE jobs, the lanes bound to the window"
        raise ApiError(422, "invalid_field", message, "fallback")
    if spec.window == "ignore":
        message = 'a fallback goes to people outside the window: it needs window "require"'
        raise ApiError(422, "invalid_field", message, "window")
    try:
        messages.check_lane("UTILITY", None, spec.fallback, recipients)
        if spec.fallback.template is None:
            raise ApiError(422, "invalid_field", "a fallback is a message.template", "template")
        personalised = Personalised(spec.fallback)
        missing = personalised.unfillable({})
        if missing is not None:
            # Filled once for the job: per-recipient columns are the main message's.
            message = f"{{{{{missing}}}}} in a fallback needs a default, as {{{{{missing}|...}}}}"
            field = personalised.field_using(missing)
            raise ApiError(422, "unfillable_placeholder", message, field)
        personalised.render({})
    except ApiError as exc:
        field = (exc.field or "").removeprefix("message.").removeprefix("message")
        where = f"fallback.{field}" if field else "fallback"
        raise ApiError(exc.status, exc.code, exc.message, where) from None
    except RenderError as exc:
        field = (exc.field or "").removeprefix("message.").removeprefix("message")
        where = f"fallback.{field}" if field else "fallback"
        raise ApiError(422, "invalid_field", exc.message, where) from None


async def check_callback(url: str | None, settings: ProducerSettings) -> None:
    """No callbacks into loopback or private networks (server-side request forgery), unless
    FANOUT_CALLBACK_ALLOW names them. Resolving the host blocks: done in a thread."""
    if not url:
        return
    try:
        await asyncio.to_thread(check_target, url, settings.callback_allow)
    except ValueError as exc:
        raise ApiError(422, "invalid_field", str(exc), "callback_url") from None


def check_count(count: int, settings: ProducerSettings) -> None:
    if count > settings.max_recipients:
        raise ApiError(
            422,
            "too_many_recipients",
            f"{count} recipients exceed the limit of {settings.max_recipients}"
            " (FANOUT_MAX_RECIPIENTS)",
            "recipients",
        )


def check_job(job: JobRequest, settings: ProducerSettings) -> Message:
    """A JSON job: its recipients carry no variables, so every placeholder needs a default.
    Returns the message to send (placeholders filled with their defaults)."""
    unique = len(set(job.recipients)) if len(job.recipients) > 1 else 1
    personalised = check_spec(job, settings, unique)
    check_count(len(job.recipients), settings)
    return with_defaults(personalised)


def with_defaults(personalised: Personalised[M]) -> M:
    """A JSON job's message (any channel's): no CSV columns, so every placeholder needs a
    default; the message with its placeholders filled with them."""
    missing = personalised.unfillable({})
    if missing is not None:
        raise ApiError(
            422,
            "unfillable_placeholder",
            f"{{{{{missing}}}}} has no value: upload the recipients as CSV with a {missing}"
            f" column, or give a default as {{{{{missing}|...}}}}",
            personalised.field_using(missing),
        )
    try:
        return personalised.render({})
    except RenderError as exc:
        raise ApiError(422, "invalid_field", exc.message, exc.field) from None


_IDEMPOTENCY_KEY = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_MAX_WAIT_S = 25
_MAX_SCHEDULE_AHEAD_S = 366 * 86400
# A send_at this close behind the server's clock (a client's "now", a little clock skew) sends
# at once; anything older is refused with 422.
_PAST_GRACE_S = 60


def idempotency_key(request: Request) -> str | None:
    key = request.headers.get("idempotency-key")
    if key is not None and not _IDEMPOTENCY_KEY.match(key):
        raise ApiError(
            422,
            "invalid_field",
            "Idempotency-Key must be 1-64 characters of letters, digits and _.:-",
            "Idempotency-Key",
        )
    return key


def wait_seconds(request: Request) -> float:
    raw = request.query_params.get("wait")
    if raw is None:
        return 0.0
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds <= _MAX_WAIT_S:
        message = f"wait must be a number of seconds from 0 to {_MAX_WAIT_S}"
        raise ApiError(422, "invalid_field", message, "wait")
    return seconds


def send_at_ms(job: UploadSpec | WhatsAppUploadSpec) -> int:
    """The job's send_at as epoch ms (0: now). Needs a time zone: a bare local time would
    mean a different moment on every server."""
    if job.send_at is None:
        return 0
    try:
        when = datetime.fromisoformat(job.send_at.replace("Z", "+00:00"))
    except ValueError:
        raise ApiError(
            422, "invalid_field", "send_at is not an ISO 8601 date and time", "send_at"
        ) from None
    if when.tzinfo is None:
        message = "send_at needs a time zone, e.g. 2026-12-01T09:00:00Z or +01:00"
        raise ApiError(422, "invalid_field", message, "send_at")
    ms = int(when.timestamp() * 1000)
    now_ms = time.time() * 1000
    if ms < now_ms - _PAST_GRACE_S * 1000:
        # Refused, not quietly sent now: a stale time in a script is a mistake worth naming.
        message = f"send_at is in the past ({job.send_at}); leave it out to send now"
        raise ApiError(422, "invalid_field", message, "send_at")
    if ms > now_ms + _MAX_SCHEDULE_AHEAD_S * 1000:
        raise ApiError(422, "invalid_field", "send_at is more than a year ahead", "send_at")
    return ms
