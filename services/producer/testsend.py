"""Test send: ``POST /v1/jobs`` with ``test_recipients`` (1-10 PSIDs) sends the personalised
message to those people only, right away, and answers 200 with each one's outcome; no job is
made, nothing is written to Redis.

Why the producer sends these itself rather than through the consumers: a test is a handful of
POSTs a person waits for, and routing them through a stream would need a reply channel, a
timeout on both sides and a path for "no consumer is running" — all to send ten messages. The
producer already receives FANOUT_PAGE_TOKENS (it needs the page ids); it keeps the tokens as
``Secret`` values (masked in every log line and repr) and frames them into a request head in
memory only, through the same ``shared.provider`` client and answer table the consumers use.
The page's rate limiter is not consulted (ten messages are far below Meta's brake); a page that
Meta restricted is refused with 409, as a job would be.
"""

from __future__ import annotations

import asyncio

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from services.producer import intake
from services.producer.common import check_page, json_response, state_of
from shared import audit, pagestate
from shared.classify import classify
from shared.errors import ApiError
from shared.messages import Message, Personalised, RenderError
from shared.models import (
    SendTestAnswer,
    SendTestRequest,
    SendTestResult,
    json_encode,
    test_send_decoder,
)
from shared.provider import MessengerClient

_MARKER = b'"test_recipients"'


def is_test(body: bytes) -> bool:
    """A JSON submit naming test_recipients (a cheap look before any decoding)."""
    return _MARKER in body


def open_client(request: Request) -> MessengerClient:
    """The producer's one provider client, made on the first test send."""
    app_state = request.app.state
    client: MessengerClient | None = getattr(app_state, "graph", None)
    if client is None:
        settings = state_of(request).settings
        client = MessengerClient(
            settings.graph_url,
            settings.graph_version,
            concurrency=10,
            timeout_s=settings.request_timeout_s,
            proxy=settings.graph_proxy,
        )
        app_state.graph = client
    return client


def _decode(body: bytes) -> SendTestRequest:
    probe = intake.decode(body, _probe_decoder)
    if "recipients" in probe:
        message = "a test send takes test_recipients instead of recipients, not both"
        raise ApiError(422, "invalid_field", message, "test_recipients")
    return intake.decode(body, test_send_decoder)


def _bodies(job: SendTestRequest, personal: Personalised[Message]) -> bytes:
    values = job.test_variables or {}
    missing = personal.unfillable(values)
    if missing is not None:
        raise ApiError(
            422,
            "unfillable_placeholder",
            f"{{{{{missing}}}}} has no value: give it in test_variables or a default as"
            f" {{{{{missing}|...}}}}",
            personal.field_using(missing),
        )
    try:
        return personal.render_json(values)
    except RenderError as exc:
        raise ApiError(422, "invalid_field", exc.message, exc.field) from None


async def send(request: Request, body: bytes, tenant: str) -> Response:
    state = state_of(request)
    settings = state.settings
    job = _decode(body)
    check_page(settings, tenant, job.page_id)
    personal = intake.check_spec(job, settings, len(set(job.test_recipients)))
    message = _bodies(job, personal)
    held = await pagestate.hold(state.redis, job.page_id)
    if held is not None:
        text = f"page {job.page_id}'s sends are held now ({held}): the job page says why"
        raise ApiError(409, held, text, "page_id")
    token = settings.page_tokens[job.page_id]
    client = open_client(request)
    head = client.head(token.reveal())
    rest: dict[str, str] = {"messaging_type": job.messaging_type}
    if job.tag:
        rest["tag"] = job.tag
    tail = b'},"message":' + message + b"," + json_encode(rest)[1:]
    psids = list(dict.fromkeys(job.test_recipients))
    answers = await asyncio.gather(
        *(client.send(head, b'{"recipient":{"id":' + json_encode(p) + tail) for p in psids)
    )
    results = []
    for psid, answer in zip(psids, answers, strict=True):
        decision = classify(answer)
        if decision.verdict == "sent":
            sent_id = answer.answer.message_id if answer.answer is not None else None
            results.append(
                SendTestResult(
                    recipient=psid, outcome="sent", code=None, subcode=None, message=sent_id
                )
            )
        else:
            results.append(
                SendTestResult(
                    recipient=psid,
                    outcome="failed",
                    code=decision.code or None,
                    subcode=decision.subcode or None,
                    message=decision.message or decision.verdict,
                )
            )
    sent = sum(r.outcome == "sent" for r in results)
    audit.action("test sent", tenant, "sent", page_id=job.page_id, total=len(psids), sent=sent)
    return json_response(SendTestAnswer(test=True, results=results), 200)


# The top-level keys only, to refuse recipients beside test_recipients by name.
_probe_decoder = msgspec.json.Decoder(dict[str, msgspec.Raw])
