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
from datetime import datetime

import msgspec
from redis.asyncio import Redis
from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from services.producer import jobs, lifecycle, observe
from services.producer.common import (
    State,
    authenticate,
    error_response,
    json_response,
    limit_param,
    state_of,
)
from shared.errors import ApiError
from shared.jobview import ENDED
from shared.models import (
    JobAccepted,
    JobRequest,
    JobView,
    job_request_decoder,
    json_encode,
)
from shared.redisconn import connect
from shared.scripts import Scripts
from shared.settings import ProducerSettings

log = logging.getLogger("fanout.producer")
_MAX_METADATA = 4096
# Jobs above this size are decoded and chunked in a thread, so the loop keeps answering.
_THREAD_ABOVE_BYTES = 256 * 1024


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


def decode_job(body: bytes) -> JobRequest:
    try:
        return job_request_decoder.decode(body)
    except msgspec.ValidationError as exc:
        text = str(exc)
        raise ApiError(422, "invalid_field", text, _field_of(text)) from None
    except msgspec.DecodeError as exc:
        raise ApiError(400, "invalid_json", f"request body is not valid JSON: {exc}") from None


def check_job(job: JobRequest, settings: ProducerSettings) -> None:
    if job.messaging_type == "MESSAGE_TAG" and job.tag is None:
        raise ApiError(422, "invalid_field", "messaging_type MESSAGE_TAG needs a tag", "tag")
    if job.messaging_type != "MESSAGE_TAG" and job.tag is not None:
        raise ApiError(
            422, "invalid_field", "a tag is only allowed with messaging_type MESSAGE_TAG", "tag"
        )
    if job.page_id not in settings.page_ids:
        raise ApiError(
            422, "unknown_page", f"page {job.page_id} has no configured page token", "page_id"
        )
    if len(job.recipients) > settings.max_recipients:
        raise ApiError(
            422,
            "too_many_recipients",
            f"{len(job.recipients)} recipients exceed the limit of {settings.max_recipients}"
            " (FANOUT_MAX_RECIPIENTS)",
            "recipients",
        )
    if job.metadata is not None and len(json_encode(job.metadata)) > _MAX_METADATA:
        raise ApiError(
            422, "invalid_field", f"metadata exceeds {_MAX_METADATA} bytes as JSON", "metadata"
        )


_IDEMPOTENCY_KEY = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_MAX_WAIT_S = 25
_MAX_SCHEDULE_AHEAD_S = 366 * 86400


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


def send_at_ms(job: JobRequest) -> int:
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
    if ms > (time.time() + _MAX_SCHEDULE_AHEAD_S) * 1000:
        raise ApiError(422, "invalid_field", "send_at is more than a year ahead", "send_at")
    return ms


def _parse_and_prepare(
    body: bytes, settings: ProducerSettings, tenant: str, key: str | None
) -> jobs.PreparedJob:
    job = decode_job(body)
    check_job(job, settings)
    return jobs.prepare(job, body, tenant, settings, send_at_ms(job), key)


async def submit_job(request: Request) -> Response:
    state = state_of(request)
    tenant = authenticate(request)
    key = idempotency_key(request)
    wait_s = wait_seconds(request)
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "application/json":
        raise ApiError(415, "unsupported_media_type", "send the job as application/json")
    body = await read_body(request, state.settings.max_body)
    if len(body) > _THREAD_ABOVE_BYTES:
        prepared = await asyncio.to_thread(_parse_and_prepare, body, state.settings, tenant, key)
    else:
        prepared = _parse_and_prepare(body, state.settings, tenant, key)
    committed = await jobs.commit(
        state.redis, state.scripts, prepared, state.settings.window, state.settings.retention_s
    )
    if committed.outcome == "conflict":
        message = "this Idempotency-Key was already used with a different request"
        raise ApiError(422, "idempotency_conflict", message, "Idempotency-Key")
    job_id = committed.job_id
    log.info(
        "job accepted" if committed.outcome == "created" else "job already accepted",
        extra={"job_id": job_id, "tenant": tenant, "total": prepared.total},
    )
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
    return json_response(await jobs.errors(state.redis, job_id, after, limit))


async def healthz(request: Request) -> Response:
    return json_response({"status": "ok"})


async def readyz(request: Request) -> Response:
    try:
        await state_of(request).redis.ping()
    except (RedisError, OSError):
        return json_response({"status": "unavailable", "redis": False}, 503)
    return json_response({"status": "ok", "redis": True})


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return error_response(ApiError(exc.status_code, code, str(exc.detail)))


async def _redis_error(request: Request, exc: Exception) -> Response:
    log.error("redis unavailable", extra={"error": repr(exc)})
    return error_response(ApiError(503, "unavailable", "the job store is unavailable; retry"))


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error", exc_info=exc)
    return error_response(ApiError(500, "internal", "internal error"))


def create_app(settings: ProducerSettings, redis: Redis | None = None) -> Starlette:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        client = redis or connect(settings.redis_url)
        app.state.fanout = State(settings, client, Scripts(client))
        try:
            yield
        finally:
            if redis is None:
                await client.aclose()

    routes = [
        Route("/v1/jobs", submit_job, methods=["POST"]),
        Route("/v1/jobs", lifecycle.list_jobs, methods=["GET"]),
        Route("/v1/jobs/{job_id}", get_job, methods=["GET"]),
        Route("/v1/jobs/{job_id}/errors", get_errors, methods=["GET"]),
        Route("/v1/jobs/{job_id}/events", lifecycle.job_events, methods=["GET"]),
        Route("/v1/jobs/{job_id}/pause", lifecycle.pause_job, methods=["POST"]),
        Route("/v1/jobs/{job_id}/resume", lifecycle.resume_job, methods=["POST"]),
        Route("/v1/jobs/{job_id}/cancel", lifecycle.cancel_job, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", observe.metrics_endpoint, methods=["GET"]),
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
