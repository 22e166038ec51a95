"""``GET /v1/jobs/{id}/series``: sent and failed per second over the last hour and per minute
over the job's life, for the job page's chart. Read from the job's series hash, which the
script recording answers keeps bounded (record_answers.lua): a ring of 3,600 per-second fields
and two fields per minute of sending."""

from __future__ import annotations

import time
from typing import cast

from starlette.requests import Request
from starlette.responses import Response

from services.producer import jobs
from services.producer.common import authenticate, json_response, state_of
from shared import keys
from shared.errors import ApiError
from shared.models import JobSeries

_HOUR_S = 3600


def parse(raw: dict[bytes, bytes], now_s: int) -> JobSeries:
    """Buckets oldest first: ``seconds`` as [epoch second, sent, failed] within the last hour,
    ``minutes`` as [epoch second of the minute, sent, failed]."""
    seconds: list[tuple[int, int, int]] = []
    minutes: dict[int, list[int]] = {}
    for field, value in raw.items():
        name = field.decode()
        if name.startswith("s:"):
            at, sent, failed = (int(x) for x in value.decode().split(":"))
            if now_s - at < _HOUR_S:
                seconds.append((at, sent, failed))
        elif name.startswith("m:"):
            _, minute, kind = name.split(":")
            bucket = minutes.setdefault(int(minute) * 60, [0, 0])
            bucket[0 if kind == "s" else 1] += int(value)
    return JobSeries(
        seconds=sorted(seconds),
        minutes=sorted((at, s, f) for at, (s, f) in minutes.items()),
    )


async def get_series(request: Request) -> Response:
    state = state_of(request)
    tenant = authenticate(request)
    job_id = request.path_params["job_id"]
    if await jobs.read(state.redis, job_id, tenant) is None:
        raise ApiError(404, "not_found", "no such job")
    raw = cast(dict[bytes, bytes], await state.redis.hgetall(keys.JobKeys.of(job_id).series))
    return json_response(parse(raw, int(time.time())))
