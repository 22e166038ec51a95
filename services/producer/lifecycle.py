"""After submit: list a tenant's jobs, follow one live (Server-Sent Events), and pause, resume
or cancel it fleet-wide. Each control is one Lua call; consumers see the new status at their
next permit batch, so the whole fleet obeys within about a second."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import cast

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from services.producer import jobs
from services.producer.common import State, authenticate, json_response, limit_param, state_of
from shared import audit, control, jobview, keys, pagestate
from shared.errors import ApiError
from shared.models import JobList, JobView, json_encode

_EVENT_POLL_S = 0.25
_HEARTBEAT_S = 15.0
_LIST_MAX = 200
STATUSES = ("scheduled", "pending", "running", "paused", "completed", "failed", "cancelled")


async def _own_job(request: Request) -> tuple[State, keys.JobKeys, JobView]:
    state = state_of(request)
    tenant = authenticate(request)
    job_id = request.path_params["job_id"]
    view = await jobs.read(state.redis, job_id, tenant)
    if view is None:
        raise ApiError(404, "not_found", "no such job")
    return state, keys.JobKeys.of(job_id), view


async def pause_job(request: Request) -> Response:
    state, k, view = await _own_job(request)
    status = await control.pause(state.scripts, k)
    if status in jobview.ENDED:
        raise ApiError(409, "job_ended", f"the job has already ended ({status})")
    _audit(request, "job paused", k, status)
    return await _reply(request, state, k)


async def resume_job(request: Request) -> Response:
    state, k, view = await _own_job(request)
    # Any job of the page lifts it, even one that has ended: a user who cancelled every job of
    # a restricted page must still be able to send again.
    await _lift_restriction(request, state, k, view.page_id)
    status = await control.resume(state.scripts, k, state.settings.window)
    if status in jobview.ENDED and view.status != "paused":
        raise ApiError(409, "job_ended", f"the job has already ended ({status})")
    _audit(request, "job resumed", k, status)
    if status in jobview.ENDED:  # nothing was left to send
        await audit.job_ended(state.redis, k.job_id)
    return await _reply(request, state, k)


async def cancel_job(request: Request) -> Response:
    state, k, view = await _own_job(request)
    stopped = await control.stop_job(state.scripts, k, "cancelled", "cancelled by request")
    if not stopped and view.status in jobview.ENDED and view.status != "cancelled":
        raise ApiError(409, "job_ended", f"the job has already ended ({view.status})")
    _audit(request, "job cancelled", k, "cancelled" if stopped else "already cancelled")
    if stopped:
        await audit.job_ended(state.redis, k.job_id)
    return await _reply(request, state, k)


def _audit(request: Request, what: str, k: keys.JobKeys, result: str) -> None:
    audit.action(what, request.scope["fanout.tenant"], result, job_id=k.job_id)


async def _lift_restriction(request: Request, state: State, k: keys.JobKeys, page_id: str) -> None:
    """Resuming a job of a page Meta restricted (10/1893063) says the user has dealt with it:
    the page sends again, and new jobs for it are accepted. Audit-logged: it is a person's act."""
    lifted = await pagestate.lift_restriction(state.redis, page_id)
    if lifted is not None:
        tenant = authenticate(request)
        audit.action(
            "page restriction lifted",
            tenant,
            "lifted",
            job_id=k.job_id,
            page_id=page_id,
            was=lifted,
        )


async def _reply(request: Request, state: State, k: keys.JobKeys) -> Response:
    view = await jobs.read(state.redis, k.job_id, authenticate(request))
    return json_response(view)


async def list_jobs(request: Request) -> Response:
    """The tenant's jobs, newest first, across every shard; ``next`` pages on."""
    state = state_of(request)
    tenant = authenticate(request)
    status = request.query_params.get("status")
    if status is not None and status not in STATUSES:
        raise ApiError(
            422, "invalid_field", f"status must be one of {', '.join(STATUSES)}", "status"
        )
    limit = limit_param(request, 50, _LIST_MAX)
    after = _cursor(request.query_params.get("after"))
    items, cursor = await _page(state, tenant, status, limit, after)
    return json_response(JobList(items=items, next=cursor))


# A page ends at (created ms, job id): jobs created in the same millisecond are told apart by
# id, so a page boundary between them skips none.
Cursor = tuple[int, str]
_CURSOR = re.compile(r"^(\d{1,20}):(\d{1,4}-[0-9a-f]{24})$")
_TIES = 100  # jobs of one tenant on one shard created in the same millisecond, at most


def _cursor(after: str | None) -> Cursor | None:
    if after is None:
        return None
    match = _CURSOR.match(after)
    if match is None:
        message = "after must be a `next` value from a previous page"
        raise ApiError(422, "invalid_field", message, "after")
    return int(match.group(1)), match.group(2)


async def _page(
    state: State, tenant: str, status: str | None, limit: int, after: Cursor | None
) -> tuple[list[JobView], str | None]:
    """Newest first: (created ms, id) descending, merged over the shards' indexes."""
    items: list[JobView] = []
    cursor = after
    while len(items) < limit:
        top = str(cursor[0]) if cursor else "+inf"  # inclusive: ties at the cursor's ms
        candidates: set[Cursor] = set()
        for shard in range(state.settings.shards):
            found = await state.redis.zrevrangebyscore(
                keys.tenant_jobs(tenant, shard),
                top,
                "-inf",
                start=0,
                num=limit + _TIES,
                withscores=True,
            )
            pairs = cast(list[tuple[bytes, float]], found)
            candidates.update((int(score), job_id.decode()) for job_id, score in pairs)
        ordered = sorted((c for c in candidates if cursor is None or c < cursor), reverse=True)
        if not ordered:
            return items, None
        for candidate in ordered[:limit]:
            cursor = candidate
            found_view = await jobview.load(state.redis, candidate[1])
            if found_view is not None and (status is None or found_view[1].status == status):
                items.append(found_view[1])
                if len(items) == limit:
                    return items, f"{candidate[0]}:{candidate[1]}"
    return items, None


async def job_events(request: Request) -> Response:
    """The job's snapshot as Server-Sent Events, on every change, until it ends."""
    state, k, view = await _own_job(request)

    async def stream() -> AsyncIterator[bytes]:
        last = b""
        idle = 0.0
        while True:
            found = await jobview.load(state.redis, k.job_id)
            if found is None:
                yield b"event: gone\ndata: {}\n\n"
                return
            data = json_encode(found[1])
            if data != last:
                yield b"event: job\ndata: " + data + b"\n\n"
                last, idle = data, 0.0
            elif idle >= _HEARTBEAT_S:
                yield b": keep-alive\n\n"
                idle = 0.0
            # A stopped job's last counts settle when its last chunk in flight is in.
            if found[1].status in jobview.ENDED and found[1].finished_at is not None:
                yield b"event: end\ndata: " + data + b"\n\n"
                return
            await asyncio.sleep(_EVENT_POLL_S)
            idle += _EVENT_POLL_S

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)
