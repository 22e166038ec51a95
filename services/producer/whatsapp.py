"""The submit side of a WhatsApp job (``"channel": "whatsapp"``): what it must pass before
anything is written, beyond what every job passes (services/producer/intake.py).

- The number: ``phone_number_id`` instead of ``page_id``, bound to the tenant in
  FANOUT_TENANT_PAGES like a page (403 otherwise), with a token in FANOUT_WA_NUMBERS (422).
  It is stored in the job hash's ``page_id`` slot, so every per-page key works per number.
- The message: ``shared.providers.whatsapp_message.WhatsAppMessage`` (text or template), its
  ``{{column}}`` placeholders filled per recipient like Messenger's.
- The recipients: E.164 digits, a leading ``+`` dropped, 8 to 15 digits; deduplicated after
  that, so ``+15551234567`` and ``15551234567`` are one person. 422 naming the row.
- The messaging tier (unique people reached outside a service window per moving 24 h, per
  business portfolio): a template job that would reach more people than are left is refused
  with 422 saying how many can be sent now and when room returns, unless the job says
  ``"tier": "spread"``; dispatch enforces the tier either way (services/consumer).

The tier check reads the portfolio's reach zset once (at most the tier's size: dispatch never
reaches more), then asks, for the recipients not in it, whether they are inside the number's
window: nothing to ask when the number heard from nobody in 24 h (a fresh campaign), else one
window_inside.lua call per 2,000. ``bench/tier_check.py`` prints the cost: 100,000 recipients
in 0.11 s from a fresh number, 4.6 s with a tenth of them inside their window (a 2-core machine
under a load of 14). It stops once the count exceeds the whole tier; a text job or an unlimited
tier costs nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from collections.abc import Collection
from datetime import UTC, datetime
from typing import Any

import msgspec
from redis.asyncio import Redis

from services.producer import intake, jobs
from shared import keys, window
from shared.errors import ApiError
from shared.messages import Personalised
from shared.models import (
    TierExceeded,
    WhatsAppJobRequest,
    WhatsAppUploadSpec,
    json_encode,
    wa_job_decoder,
)
from shared.providers import whatsapp_message
from shared.providers.whatsapp_message import WhatsAppMessage
from shared.settings import ProducerSettings

CHANNEL = "whatsapp"
DAY_MS = 24 * 3600 * 1000
_E164 = re.compile(r"\+?[0-9]{8,15}")
_BATCH = 2000  # recipients per lookup: a few ms of Redis's time per script call
_MAX_METADATA = 4096
_THREAD_ABOVE_BYTES = 256 * 1024  # as Messenger's JSON jobs (services/producer/app.py)


class _ChannelOnly(msgspec.Struct):
    channel: str = "messenger"


_CHANNEL_ONLY = msgspec.json.Decoder(_ChannelOnly)


def is_whatsapp(body: bytes) -> bool:
    """Whether a JSON job names the WhatsApp channel. A body without the word is not one, at
    the cost of one scan of the bytes: a Messenger job is never decoded twice."""
    if b'"whatsapp"' not in body:
        return False
    try:
        return _CHANNEL_ONLY.decode(body).channel == CHANNEL
    except msgspec.MsgspecError:
        return False  # not JSON, or channel not a string: Messenger's decoder says what is wrong


def check_number(settings: ProducerSettings, tenant: str, number: str) -> None:
    """403 for a number that is not the tenant's (configured or not: no tenant learns which
    numbers this service holds for others), 422 for the tenant's number without a token."""
    if not settings.owns(tenant, number):
        message = f"number {number} is not one of this tenant's numbers (FANOUT_TENANT_PAGES)"
        raise ApiError(403, "number_forbidden", message, "phone_number_id")
    if number not in settings.wa_tokens:
        message = f"number {number} has no configured token (FANOUT_WA_NUMBERS)"
        raise ApiError(422, "unknown_number", message, "phone_number_id")


def check_spec(
    spec: WhatsAppUploadSpec, settings: ProducerSettings, tenant: str
) -> Personalised[WhatsAppMessage]:
    """The rules every WhatsApp job meets, whatever carries its recipients; returns the
    message with its placeholders parsed."""
    check_number(settings, tenant, spec.phone_number_id)
    if spec.metadata is not None and len(json_encode(spec.metadata)) > _MAX_METADATA:
        raise ApiError(
            422, "invalid_field", f"metadata exceeds {_MAX_METADATA} bytes as JSON", "metadata"
        )
    return Personalised(spec.message)


def normalise(recipients: list[str], field: str = "recipients") -> list[str]:
    """The recipients as digits only, deduplicated, in order; 422 naming the first bad one."""
    match = _E164.fullmatch
    if not all(map(match, recipients)):
        i = next(i for i, r in enumerate(recipients) if not match(r))
        raise ApiError(422, "invalid_field", bad_number(recipients[i]), f"{field}[{i}]")
    return list(dict.fromkeys(r.removeprefix("+") for r in recipients))


def bad_number(text: str) -> str:
    return f"{text!r} is not a phone number in E.164: 8 to 15 digits, a leading + allowed"


def job_fields(
    spec: WhatsAppUploadSpec,
    message: WhatsAppMessage,
    tenant: str,
    settings: ProducerSettings,
    total: int,
    chunks: int,
) -> dict[str, Any]:
    """The job hash's fields, as Messenger's (services/producer/jobs.py) with the number in
    ``page_id``, ``channel`` set, no lane, and the tier choice."""
    return {
        "tenant": tenant,
        "channel": CHANNEL,
        "page_id": spec.phone_number_id,
        "message": whatsapp_message.encode(message).decode(),
        "kind": whatsapp_message.kind(message),
        "text": "",  # read by Messenger consumers of old releases only
        "messaging_type": "",
        "tag": "",
        "metadata": json_encode(spec.metadata).decode() if spec.metadata else "",
        "callback_url": spec.callback_url or "",
        "total": total,
        "chunks": chunks,
        "chunk_size": settings.chunk_size,
        "window": settings.window,
        "window_asked": "",
        "suppress": "1" if spec.suppress else "0",
        "fallback": "",
        "max_failure_rate": repr(spec.max_failure_rate),
        "tier": spec.tier,
    }


def parse_json(
    body: bytes, settings: ProducerSettings, tenant: str, key: str | None
) -> tuple[jobs.PreparedJob, WhatsAppJobRequest, list[str]]:
    """A JSON WhatsApp job, checked and cut into chunks (CPU only: the caller may run it in a
    thread); the tier check, which reads Redis, is ``check_tier``'s."""
    if b'"test_recipients"' in body:
        refused = "test sends (test_recipients) are for Messenger jobs for now"
        raise ApiError(422, "invalid_field", refused, "test_recipients")
    job = intake.decode(body, wa_job_decoder)
    personalised = check_spec(job, settings, tenant)
    recipients = normalise(job.recipients)
    intake.check_count(len(job.recipients), settings)
    message = intake.with_defaults(personalised)
    shard = jobs.shard_for(tenant, key, settings.shards)
    job_id = keys.new_job_id(shard)
    chunks = jobs.encode_chunks(job_id, recipients, settings.chunk_size)
    prepared = jobs.PreparedJob(
        job_id=job_id,
        total=len(recipients),
        duplicates_removed=len(job.recipients) - len(recipients),
        chunks=chunks,
        fields=job_fields(job, message, tenant, settings, len(recipients), len(chunks)),
        send_at_ms=intake.send_at_ms(job),
        idempotency=None if key is None else keys.idempotency(shard, tenant, key),
        fingerprint="" if key is None else hashlib.sha256(body).hexdigest(),
    )
    return prepared, job, recipients


async def prepare_json(
    redis: Redis, settings: ProducerSettings, body: bytes, tenant: str, key: str | None
) -> jobs.PreparedJob:
    """``POST /v1/jobs`` with a JSON WhatsApp job: checked, tier included, ready to commit."""
    if len(body) > _THREAD_ABOVE_BYTES:
        prepared, job, recipients = await asyncio.to_thread(parse_json, body, settings, tenant, key)
    else:
        prepared, job, recipients = parse_json(body, settings, tenant, key)
    await check_tier(redis, settings, job, recipients)
    return prepared


# ---- the messaging tier ----


class Reach(msgspec.Struct, kw_only=True):
    """A template job against its portfolio's tier, now."""

    portfolio: str
    tier: int | None  # None: unlimited
    reached: int = 0  # unique people reached outside a window in the last 24 h
    left: int | None = None  # tier - reached; None: unlimited
    would_count: int = 0  # of the recipients looked at: outside a window, not reached
    looked_at: int = 0  # recipients looked up (fewer than all once the job exceeds the tier)


async def reach(
    redis: Redis,
    settings: ProducerSettings,
    number: str,
    recipients: Collection[str],
    now_ms: int | None = None,
) -> Reach:
    """How many of the recipients a template would count against the tier: those outside the
    number's 24-hour service window (shared/window.py) and not in the portfolio's reach zset
    within 24 h. Stops once they exceed the whole tier; no lookup for an unlimited tier."""
    portfolio = settings.portfolio_of(number)
    tier = settings.tier_for(number)
    found = Reach(portfolio=portfolio, tier=tier)
    if tier is None:
        return found
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    since = now_ms - DAY_MS
    key = keys.wa_reached(portfolio)
    reached = await _reached_since(redis, key, since)
    found.reached = len(reached)
    found.left = max(0, tier - found.reached)
    people = list(recipients)
    for start in range(0, len(people), _BATCH):
        batch = people[start : start + _BATCH]
        new = [p for p in batch if p not in reached]
        inside = await window.inside(redis, number, new, now_ms / 1000)
        found.would_count += inside.count(False)
        found.looked_at += len(batch)
        if found.would_count > tier:
            break  # more than the whole tier: it cannot go at once whatever the reach
    return found


async def _reached_since(redis: Redis, key: str, since_ms: int) -> set[str]:
    """The people the portfolio reached since then: at most its tier (dispatch never reaches
    more), read whole in one call. Cheaper than asking about each recipient, which costs the
    client ~8 us per member to pack (redis-py) and Redis a lookup each."""
    members = await redis.zrangebyscore(key, since_ms, "+inf")
    return {m.decode() if isinstance(m, bytes) else str(m) for m in members}


async def room_at(redis: Redis, portfolio: str, needed: int, now_ms: int) -> int | None:
    """When (epoch ms) ``needed`` more people fit in the tier: the needed-th oldest reach
    within 24 h leaves the moving window then. None if fewer than that are in it."""
    entries = await redis.zrangebyscore(
        keys.wa_reached(portfolio),
        now_ms - DAY_MS,
        "+inf",
        start=needed - 1,
        num=1,
        withscores=True,
    )
    return None if not entries else int(entries[0][1]) + DAY_MS


def _iso(ms: int) -> str:
    return (
        datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    )


async def check_tier(
    redis: Redis,
    settings: ProducerSettings,
    spec: WhatsAppUploadSpec,
    recipients: Collection[str],
) -> None:
    """422 when a template job would reach more new people than the tier has left, naming
    how many can be sent now and when room returns; nothing for a text job (it reaches only
    people inside their window), a ``spread`` job, or an unlimited tier. A scheduled job is
    weighed at its send_at: what the last 24 h's reach and windows will be then (less what is
    sent before it, which dispatch still counts)."""
    if spec.message.template is None or spec.tier == "spread":
        return
    now_ms = max(int(time.time() * 1000), intake.send_at_ms(spec))
    found = await reach(redis, settings, spec.phone_number_id, recipients, now_ms)
    if found.tier is None or found.left is None or found.would_count <= found.left:
        return
    whole = found.looked_at == len(recipients)
    counted = f"{found.would_count}" if whole else f"more than {found.tier}"
    when = None
    if whole:  # within the tier: the job fits once enough of the last 24 h's reach ages out
        when = await room_at(redis, found.portfolio, found.would_count - found.left, now_ms)
    fits = (
        f"room for all of them returns at {_iso(when)}"
        if when is not None
        else "the job is larger than the whole tier"
    )
    message = (
        f"this template would reach {counted} people outside a service window not reached in"
        f" the last 24 h; portfolio {found.portfolio}'s messaging tier is {found.tier} people"
        f" per moving 24 h and {found.left} are left, so {found.left} can be sent"
        f" {'at send_at' if spec.send_at else 'now'}; {fits}."
        ' Send with "tier": "spread" to send as room returns'
    )
    raise ApiError(
        422,
        "tier_exceeded",
        message,
        "recipients",
        msgspec.structs.asdict(
            TierExceeded(
                can_send_now=found.left,
                tier=found.tier,
                portfolio=found.portfolio,
                reached_24h=found.reached,
                would_count=found.would_count if whole else None,
                room_at=None if when is None else _iso(when),
            )
        ),
    )
