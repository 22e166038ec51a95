"""What fanout knows of a page's people: its suppression list, and one person's state (last
interaction, in the window or not, suppressed or not). Every route is tenant-scoped: a page that
is not the tenant's answers 403 page_forbidden before anything is read or written."""

from __future__ import annotations

import re
import time

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from services.producer import intake
from services.producer.common import authenticate, check_page, json_response, limit_param, state_of
from shared import audit, suppressions, window
from shared.errors import ApiError
from shared.jobview import iso_ms
from shared.models import (
    PersonView,
    SuppressAdded,
    SuppressionItem,
    SuppressionPage,
    SuppressRequest,
)

_PSID = re.compile(r"^[0-9]{1,64}$")
_decode_request = msgspec.json.Decoder(SuppressRequest)
_MAX_BODY = 1024 * 1024


def _page(request: Request) -> str:
    tenant = authenticate(request)
    page_id: str = request.path_params["page_id"]
    check_page(state_of(request).settings, tenant, page_id)
    return page_id


def _psid(raw: str | None, field: str) -> str:
    if raw is None or not _PSID.match(raw):
        raise ApiError(422, "invalid_field", f"{field} must be a PSID (1-64 digits)", field)
    return raw


def _item(found: suppressions.Suppression) -> SuppressionItem:
    return SuppressionItem(
        psid=found.psid, code=found.code, suppressed_at=iso_ms(found.suppressed_at_ms)
    )


async def list_suppressions(request: Request) -> Response:
    page_id = _page(request)
    raw = request.query_params.get("after")
    after = None if raw is None else suppressions.parse_cursor(raw)
    if raw is not None and after is None:
        message = "after must be a `next` value from a previous page"
        raise ApiError(422, "invalid_field", message, "after")
    limit = limit_param(request, 100, 1000)
    items, cursor = await suppressions.page(state_of(request).redis, page_id, after, limit)
    return json_response(SuppressionPage(items=[_item(i) for i in items], next=cursor))


async def add_suppressions(request: Request) -> Response:
    page_id = _page(request)
    body = await intake.read_body(request, _MAX_BODY)
    asked = intake.decode(body, _decode_request)
    recipients = list(dict.fromkeys(asked.recipients))
    redis = state_of(request).redis
    now_ms = int(time.time() * 1000)
    added = await suppressions.add(redis, page_id, recipients, asked.reason, now_ms)
    tenant = request.scope["fanout.tenant"]
    audit.action("suppressed", tenant, "ok", page_id=page_id, added=added, total=len(recipients))
    return json_response(SuppressAdded(added=added, total=len(recipients)), 200)


async def remove_suppression(request: Request) -> Response:
    page_id = _page(request)
    psid = _psid(request.path_params["psid"], "psid")
    if not await suppressions.remove(state_of(request).redis, page_id, psid):
        raise ApiError(404, "not_found", f"{psid} is not suppressed on page {page_id}", "psid")
    audit.action("unsuppressed", request.scope["fanout.tenant"], "ok", page_id=page_id)
    return Response(status_code=204)


async def get_person(request: Request) -> Response:
    page_id = _page(request)
    psid = _psid(request.path_params["psid"], "psid")
    redis = state_of(request).redis
    (last,) = await window.last_interactions(redis, page_id, [psid])
    found = await suppressions.get(redis, page_id, psid)
    return json_response(
        PersonView(
            page_id=page_id,
            psid=psid,
            last_interaction_at=None if last is None else iso_ms(last * 1000),
            in_window=window.in_window(last, time.time()),
            suppressed=None if found is None else _item(found),
        )
    )
