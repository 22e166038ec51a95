"""``POST /v1/checks``: the policy checks a job would meet, before it is sent: every rule the
submit applies (lane and tag, message limits, placeholders, the page: 422 naming the field,
403 for another tenant's page), then, for the recipients given (up to 10,000: the job page
sends the first rows of a CSV), the window rule the job would get and how many are outside
the 24-hour window or suppressed, so would be skipped at dispatch. Reads only; writes nothing.
A WhatsApp job (``"channel": "whatsapp"``) gets its own rules (services/producer/whatsapp.py)
and, for a template, how many of the recipients would count against the portfolio's tier.
"""

from __future__ import annotations

import time
from typing import Literal, cast

from redis.asyncio import Redis
from starlette.requests import Request
from starlette.responses import Response

from services.producer import intake, whatsapp
from services.producer.common import authenticate, check_page, json_response, state_of
from shared import suppressions, window
from shared.models import (
    CheckAnswer,
    CheckRequest,
    WhatsAppCheckRequest,
    check_decoder,
    wa_check_decoder,
)

_PIPELINE = 1000


async def _suppressed(redis: Redis, page_id: str, psids: list[str]) -> set[str]:
    found: set[str] = set()
    for start in range(0, len(psids), _PIPELINE):
        part = psids[start : start + _PIPELINE]
        async with redis.pipeline(transaction=False) as pipe:
            for psid in part:
                pipe.hexists(suppressions.key_of(page_id, psid), psid)
            replies = await pipe.execute()
        found.update(p for p, there in zip(part, replies, strict=True) if there)
    return found


async def check(request: Request) -> Response:
    state = state_of(request)
    tenant = authenticate(request)
    body = await intake.read_body(request, state.settings.max_body)
    if whatsapp.is_whatsapp(body):
        return json_response(await _check_whatsapp(state.redis, body, tenant, request))
    job: CheckRequest = intake.decode(body, check_decoder)
    check_page(state.settings, tenant, job.page_id)
    psids = list(dict.fromkeys(job.recipients))
    personal = intake.check_spec(job, state.settings, len(psids))
    redis = state.redis
    rule = cast(
        Literal["require", "ignore"],
        await window.rule_for(
            redis, job.page_id, job.messaging_type, job.window or "", job.fallback is not None
        ),
    )
    now = time.time()
    lasts = await window.last_interactions(redis, job.page_id, psids)
    outside = [p for p, last in zip(psids, lasts, strict=True) if not window.in_window(last, now)]
    suppressed = await _suppressed(redis, job.page_id, psids) if job.suppress else set()
    would_skip = suppressed | (set(outside) if rule == "require" else set())
    notes = []
    if personal.required:
        names = ", ".join(personal.required)
        notes.append(f"placeholders without a default need a value in every row: {names}")
    if rule == "ignore" and job.messaging_type in ("RESPONSE", "UPDATE"):
        notes.append(
            "the window is not enforced: the page's webhooks have not flowed for 24 hours"
            if not job.window
            else "window: ignore sends to people outside the 24-hour window too"
        )
    if job.fallback is not None and rule == "require":
        notes.append("people outside the window get the utility fallback instead")
    return json_response(
        CheckAnswer(
            checked=len(psids),
            window_rule=rule,
            window_default=not job.window,
            outside_window=len(outside),
            suppressed=len(suppressed),
            would_skip=len(would_skip),
            notes=notes,
        )
    )


async def _check_whatsapp(redis: Redis, body: bytes, tenant: str, request: Request) -> CheckAnswer:
    settings = state_of(request).settings
    job: WhatsAppCheckRequest = intake.decode(body, wa_check_decoder)
    personal = whatsapp.check_spec(job, settings, tenant)
    people = whatsapp.normalise(job.recipients)
    number = job.phone_number_id
    now = time.time()
    outside = (await window.inside(redis, number, people, now)).count(False)
    suppressed = await _suppressed(redis, number, people) if job.suppress else set()
    notes = []
    if personal.required:
        names = ", ".join(personal.required)
        notes.append(f"placeholders without a default need a value in every row: {names}")
    answer = CheckAnswer(
        checked=len(people),
        window_rule="ignore",
        window_default=True,
        outside_window=outside,
        suppressed=len(suppressed),
        would_skip=len(suppressed),
        notes=notes,
        channel="whatsapp",
    )
    if job.message.template is None:
        notes.append(
            "a text reaches only people inside their 24-hour service window: the"
            f" {outside} outside it would fail with 131047; a template reaches them"
        )
        return answer
    found = await whatsapp.reach(redis, settings, number, people)
    answer.tier, answer.tier_left, answer.would_count = found.tier, found.left, found.would_count
    if found.left is not None and found.would_count > found.left:
        notes.append(
            f"{found.would_count} would count against the tier and {found.left} are left:"
            ' the job would be refused (422 tier_exceeded) unless sent with "tier": "spread"'
        )
    return answer
