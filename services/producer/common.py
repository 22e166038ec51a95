"""What every producer route shares: the app state, JSON answers, authentication, paging."""

from __future__ import annotations

import hmac
from typing import Any

import msgspec
from redis.asyncio import Redis
from starlette.requests import Request
from starlette.responses import Response

from shared.errors import ApiError
from shared.models import ErrorBody, ErrorResponse, json_encode
from shared.scripts import Scripts
from shared.settings import ProducerSettings


class State(msgspec.Struct):
    settings: ProducerSettings
    redis: Redis
    scripts: Scripts


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json_encode(body), status, headers, media_type="application/json")


def error_response(error: ApiError) -> Response:
    headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
    body = ErrorBody(error.code, error.message, error.field)
    if error.details:
        detailed = {**msgspec.to_builtins(body), **error.details}
        return json_response({"error": detailed}, error.status, headers)
    return json_response(ErrorResponse(body), error.status, headers)


def state_of(request: Request) -> State:
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
    for name, secret in state_of(request).settings.api_tokens.items():
        if hmac.compare_digest(given, secret.reveal().encode()):
            tenant = name
    if tenant is None:
        raise ApiError(401, "unauthorized", "invalid API token")
    request.scope["fanout.tenant"] = tenant  # for the audit line of a later refusal
    return tenant


def check_page(settings: ProducerSettings, tenant: str, page_id: str) -> None:
    """Every route that names a page calls this before it writes anything. A page that is not
    the tenant's answers 403 whether or not it is configured, so no tenant can learn which pages
    this service holds for others."""
    if not settings.owns(tenant, page_id):
        message = f"page {page_id} is not one of this tenant's pages (FANOUT_TENANT_PAGES)"
        raise ApiError(403, "page_forbidden", message, "page_id")


def limit_param(request: Request, default: int, most: int) -> int:
    raw = request.query_params.get("limit")
    if raw is None:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= most:
        raise ApiError(
            422, "invalid_field", f"limit must be a whole number from 1 to {most}", "limit"
        )
    return int(raw)
