"""The producer's HTTP API: jobs in, status out.

Every refusal is an ``ApiError`` answered as ``{"error": {"code", "message", "field"}}`` with its
4xx status, raised before anything is written to Redis. A 5xx is a bug, except 503 when Redis
itself cannot be reached.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from redis.asyncio import Redis
from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from services.producer import (
    checks,
    intake,
    jobs,
    lifecycle,
    observe,
    openapi,
    page,
    people,
    series,
    testsend,
    upload,
    webhooks,
    whatsapp,
)
from services.producer.common import (
    State,
    authenticate,
    check_page,
    error_response,
    json_response,
    limit_param,
    state_of,
)
from shared import audit, keys, pagestate, window
from shared.errors import ApiError
from shared.jobview import ENDED
from shared.models import (
    JobAccepted,
    JobView,
)
from shared.redisconn import open_redis
from shared.scripts import Scripts
from shared.settings import ProducerSettings

log = logging.getLogger("fanout.producer")
_THREAD_ABOVE_BYTES = 256 * 1024


def _parse_and_prepare(
    body: bytes, settings: ProducerSettings, tenant: str, key: str | None
) -> jobs.PreparedJob:
    job = intake.decode_job(body)
    check_page(settings, tenant, job.page_id)
    message = intake.check_job(job, settings)
    return jobs.prepare(job, message, body, tenant, settings, intake.send_at_ms(job), key)


async def submit_job(request: Request) -> Response:
    state = state_of(request)
    tenant = authenticate(request)
    key = intake.idempotency_key(request)
    wait_s = intake.wait_seconds(request)
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media == "multipart/form-data":
        prepared = await upload.prepare_upload(request, state.redis, state.settings, tenant, key)
    elif media == "application/json":
        body = await intake.read_body(request, state.settings.max_body)
        if whatsapp.is_whatsapp(body):
            prepared = await whatsapp.prepare_json(state.redis, state.settings, body, tenant, key)
        elif testsend.is_test(body):
            return await testsend.send(request, body, tenant)
        elif len(body) > _THREAD_ABOVE_BYTES:
            prepared = await asyncio.to_thread(
                _parse_and_prepare, body, state.settings, tenant, key
            )
        else:
            prepared = _parse_and_prepare(body, state.settings, tenant, key)
        await intake.check_callback(prepared.fields["callback_url"], state.settings)
    else:
        message = "send the job as application/json, or multipart/form-data with a CSV"
        raise ApiError(415, "unsupported_media_type", message)
    fields = prepared.fields
    fields["window_rule"] = await window.rule_for(
        state.redis,
        fields["page_id"],
        fields["messaging_type"],
        fields["window_asked"],
        bool(fields["fallback"]),
    )
    await _admit(state, prepared)
    committed = await jobs.commit(
        state.redis, state.scripts, prepared, state.settings.window, state.settings.retention_s
    )
    if committed.outcome == "conflict":
        message = "this Idempotency-Key was already used with a different request"
        raise ApiError(422, "idempotency_conflict", message, "Idempotency-Key")
    job_id = committed.job_id
    result = "accepted" if committed.outcome == "created" else "already accepted"
    audit.action("job submitted", tenant, result, job_id=job_id, total=prepared.total)
    view = await jobs.read(state.redis, job_id, tenant)
    if view is None:  # swept already (an old idempotent retry): answer what we know
        raise ApiError(404, "not_found", "the job for this Idempotency-Key no longer exists")
    if wait_s > 0:
        ended = await _wait_for_end(state, job_id, tenant, wait_s)
        if ended is not None:
            return json_response(ended, 200)
    status_url = f"/v1/jobs/{job_id}"
    accepted = JobAccepted(
        job_id=job_id,
        status=view.status,
        total=view.total,
        duplicates_removed=prepared.duplicates_removed,
        status_url=status_url,
    )
    return json_response(accepted, 202, {"Location": status_url})


async def _admit(state: State, prepared: jobs.PreparedJob) -> None:
    """409 while Meta restricts the page (10/1893063), until a user resumes one of its jobs;
    otherwise the job is listed under its page, so a restriction found later pauses it too."""
    page_id = prepared.fields["page_id"]
    reason = await pagestate.admit(
        state.scripts, page_id, prepared.job_id, state.settings.retention_s
    )
    if reason is None:
        return
    await state.redis.delete(keys.JobKeys.of(prepared.job_id).backlog)  # an upload's chunks
    message = (
        f"page {page_id} is restricted from sending ({reason}); once Meta lifts the"
        " restriction, resume one of the page's jobs (POST /v1/jobs/{id}/resume)"
    )
    raise ApiError(409, "page_restricted", message, "page_id")


async def _wait_for_end(state: State, job_id: str, tenant: str, seconds: float) -> JobView | None:
    deadline = time.monotonic() + seconds
    while True:
        view = await jobs.read(state.redis, job_id, tenant)
        if view is not None and view.status in ENDED:
            return view
        if time.monotonic() >= deadline:
            return None
        await asyncio.sleep(min(0.05, max(0.0, deadline - time.monotonic())))


async def get_job(request: Request) -> Response:
    state = state_of(request)
    tenant = authenticate(request)
    view = await jobs.read(state.redis, request.path_params["job_id"], tenant)
    if view is None:
        raise ApiError(404, "not_found", "no such job")
    return json_response(view)


_STREAM_ID = re.compile(r"^\d{1,20}-\d{1,20}$")


async def get_errors(request: Request) -> Response:
    state = state_of(request)
    tenant = authenticate(request)
    job_id = request.path_params["job_id"]
    if await jobs.read(state.redis, job_id, tenant) is None:
        raise ApiError(404, "not_found", "no such job")
    after = request.query_params.get("after")
    if after is not None and not _STREAM_ID.match(after):
        raise ApiError(
            422, "invalid_field", "after must be a `next` value from a previous page", "after"
        )
    limit = limit_param(request, 100, 1000)
    outcome = request.query_params.get("outcome", "failed")
    if outcome not in ("failed", "skipped"):
        raise ApiError(422, "invalid_field", "outcome must be failed or skipped", "outcome")
    skipped = outcome == "skipped"
    return json_response(await jobs.errors(state.redis, job_id, after, limit, skipped))


async def list_pages(request: Request) -> Response:
    """The pages the tenant may send as (the job page's compose form offers these), and its
    WhatsApp numbers apart (``numbers``, only when it has some): a number is no page."""
    state = state_of(request)
    tenant = authenticate(request)
    senders = state.settings.tenant_pages.get(tenant, frozenset())
    numbers = senders & frozenset(state.settings.wa_tokens)
    body: dict[str, list[dict[str, str]]] = {
        "items": [{"page_id": p} for p in sorted(senders - numbers)]
    }
    if numbers:
        body["numbers"] = [{"phone_number_id": n} for n in sorted(numbers)]
    return json_response(body)


async def healthz(request: Request) -> Response:
    return json_response({"status": "ok"})


async def readyz(request: Request) -> Response:
    try:
        await state_of(request).redis.ping()
    except (RedisError, OSError):
        return json_response({"status": "unavailable", "redis": False}, 503)
    return json_response({"status": "ok", "redis": True})


def _refused(request: Request, exc: ApiError) -> Response:
    if exc.status < 500:
        scope = request.scope
        route, tenant = scope.get("fanout.route", "other"), scope.get("fanout.tenant")
        audit.refused(exc.status, exc.code, route, request.method, tenant, exc.field)
    return error_response(exc)


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return _refused(request, exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}.get(
        exc.status_code, "http_error"
    )
    return _refused(request, ApiError(exc.status_code, code, str(exc.detail)))


async def _redis_error(request: Request, exc: Exception) -> Response:
    log.error("redis unavailable", extra={"error": repr(exc)})
    return error_response(ApiError(503, "unavailable", "the job store is unavailable; retry"))


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error", exc_info=exc)
    return error_response(ApiError(500, "internal", "internal error"))


def create_app(settings: ProducerSettings, redis: Redis | None = None) -> Starlette:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        for page_id in settings.unbound_pages():
            log.warning(
                "page has a token but no tenant in FANOUT_TENANT_PAGES: nobody can send as it",
                extra={"page_id": page_id},
            )
        if settings.app_secret is None or settings.webhook_verify_token is None:
            log.warning(
                "FANOUT_APP_SECRET or FANOUT_WEBHOOK_VERIFY_TOKEN is not set: /webhooks/messenger"
                " and /webhooks/whatsapp refuse Meta (no receipts, window or page enforcement"
                " from webhooks)"
            )
        client = redis or await open_redis(settings.redis_url, settings.redis_cluster)
        app.state.fanout = State(settings, client, Scripts(client))
        try:
            yield
        finally:
            graph = getattr(app.state, "graph", None)  # made by the first test send
            if graph is not None:
                await graph.close()
            if redis is None:
                await client.aclose()

    routes = [
        Route("/v1/jobs", submit_job, methods=["POST"]),
        Route("/v1/jobs", lifecycle.list_jobs, methods=["GET"]),
        Route("/v1/jobs/{job_id}", get_job, methods=["GET"]),
        Route("/v1/jobs/{job_id}/errors", get_errors, methods=["GET"]),
        Route("/v1/jobs/{job_id}/series", series.get_series, methods=["GET"]),
        Route("/v1/pages", list_pages, methods=["GET"]),
        Route("/v1/checks", checks.check, methods=["POST"]),
        Route("/v1/jobs/{job_id}/events", lifecycle.job_events, methods=["GET"]),
        Route("/v1/jobs/{job_id}/pause", lifecycle.pause_job, methods=["POST"]),
        Route("/v1/jobs/{job_id}/resume", lifecycle.resume_job, methods=["POST"]),
        Route("/v1/jobs/{job_id}/cancel", lifecycle.cancel_job, methods=["POST"]),
        Route("/webhooks/messenger", webhooks.verify, methods=["GET"]),
        Route("/webhooks/messenger", webhooks.receive, methods=["POST"]),
        Route("/webhooks/whatsapp", webhooks.verify_whatsapp, methods=["GET"]),
        Route("/webhooks/whatsapp", webhooks.receive_whatsapp, methods=["POST"]),
        Route("/v1/pages/{page_id}/suppressions", people.list_suppressions, methods=["GET"]),
        Route("/v1/pages/{page_id}/suppressions", people.add_suppressions, methods=["POST"]),
        Route(
            "/v1/pages/{page_id}/suppressions/{psid}",
            people.remove_suppression,
            methods=["DELETE"],
        ),
        Route("/v1/pages/{page_id}/people/{psid}", people.get_person, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", observe.metrics_endpoint, methods=["GET"]),
        *page.routes(),
        Route("/openapi.json", openapi.openapi, methods=["GET"]),
    ]
    return Starlette(
        routes=routes,
        middleware=[Middleware(observe.HttpMetrics, routes=routes)],
        exception_handlers={
            ApiError: _api_error,
            HTTPException: _http_error,
            RedisError: _redis_error,
            Exception: _unexpected,
        },
        lifespan=lifespan,
    )
