"""The producer's HTTP API: jobs in, status out.

Every refusal is an ``ApiError`` answered as ``{"error": {"code", "message", "field"}}`` with its
4xx status, raised before anything is written to Redis. A 5xx is a bug, except 503 when Redis
itself cannot be reached.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import msgspec
from redis.asyncio import Redis
from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from services.producer import jobs, observe
from shared.errors import ApiError
from shared.models import (
    ErrorBody,
    ErrorResponse,
    JobAccepted,
    JobRequest,
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


class State(msgspec.Struct):
    settings: ProducerSettings
    redis: Redis
    scripts: Scripts


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json_encode(body), status, headers, media_type="application/json")


def error_response(error: ApiError) -> Response:
    headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
    return json_response(
        ErrorResponse(ErrorBody(error.code, error.message, error.field)), error.status, headers
    )


def _state(request: Request) -> State:
    state: State = request.app.state.fanout
    return state


def authenticate(request: Request) -> str:
    """The tenant whose token the request carries; 401 otherwise."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "unauthorized", "missing bearer token (Authorization: Bearer <token>)")
    given = token.strip().encode()
    tenant = None
    # Compare against every token so the time taken does not say which one came close.
    for name, secret in _state(request).settings.api_tokens.items():
        if hmac.compare_digest(given, secret.reveal().encode()):
            tenant = name
    if tenant is None:
        raise ApiError(401, "unauthorized", "invalid API token")
    return tenant


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


def _parse_and_prepare(body: bytes, settings: ProducerSettings, tenant: str) -> jobs.PreparedJob:
    job = decode_job(body)
    check_job(job, settings)
    return jobs.prepare(job, tenant, settings.shards, settings.chunk_size)


async def submit_job(request: Request) -> Response:
    state = _state(request)
    tenant = authenticate(request)
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "application/json":
        raise ApiError(415, "unsupported_media_type", "send the job as application/json")
    body = await read_body(request, state.settings.max_body)
    if len(body) > _THREAD_ABOVE_BYTES:
        prepared = await asyncio.to_thread(_parse_and_prepare, body, state.settings, tenant)
    else:
        prepared = _parse_and_prepare(body, state.settings, tenant)
    await jobs.commit(state.redis, state.scripts, prepared, state.settings.window)
    log.info(
        "job accepted",
        extra={"job_id": prepared.job_id, "tenant": tenant, "total": prepared.total},
    )
    status_url = f"/v1/jobs/{prepared.job_id}"
    accepted = JobAccepted(
        job_id=prepared.job_id,
        status="pending",
        total=prepared.total,
        duplicates_removed=prepared.duplicates_removed,
        status_url=status_url,
    )
    return json_response(accepted, 202, {"Location": status_url})


async def get_job(request: Request) -> Response:
    state = _state(request)
    tenant = authenticate(request)
    view = await jobs.read(state.redis, request.path_params["job_id"], tenant)
    if view is None:
        raise ApiError(404, "not_found", "no such job")
    return json_response(view)


_STREAM_ID = re.compile(r"^\d{1,20}-\d{1,20}$")


def _limit(request: Request, default: int, most: int) -> int:
    raw = request.query_params.get("limit")
    if raw is None:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= most:
        raise ApiError(
            422, "invalid_field", f"limit must be a whole number from 1 to {most}", "limit"
        )
    return int(raw)


async def get_errors(request: Request) -> Response:
    state = _state(request)
    tenant = authenticate(request)
    job_id = request.path_params["job_id"]
    if await jobs.read(state.redis, job_id, tenant) is None:
        raise ApiError(404, "not_found", "no such job")
    after = request.query_params.get("after")
    if after is not None and not _STREAM_ID.match(after):
        raise ApiError(
            422, "invalid_field", "after must be a `next` value from a previous page", "after"
        )
    limit = _limit(request, 100, 1000)
    return json_response(await jobs.errors(state.redis, job_id, after, limit))


async def healthz(request: Request) -> Response:
    return json_response({"status": "ok"})


async def readyz(request: Request) -> Response:
    try:
        await _state(request).redis.ping()
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
        Route("/v1/jobs/{job_id}", get_job, methods=["GET"]),
        Route("/v1/jobs/{job_id}/errors", get_errors, methods=["GET"]),
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
