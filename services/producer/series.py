"""``GET /v1/jobs/{id}/series``: sent, failed, delivered and read per second over the last
hour and per minute over the job's life, for the job page's chart. Read from the job's series
hash, which the scripts recording answers keep bounded (lib.lua series_add): a ring of 3,600
per-second fields and four fields per minute."""

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
Bucket = tuple[int, int, int, int, int]


def parse(raw: dict[bytes, bytes], now_s: int) -> JobSeries:
    """Buckets oldest first: ``seconds`` as [epoch second, sent, failed, delivered, read]
    within the last hour, ``minutes`` the same per minute (its first second)."""
    seconds: list[Bucket] = []
    minutes: dict[int, list[int]] = {}
    for field, value in raw.items():
        name = field.decode()
        if name.startswith("s:"):
            numbers = [int(x) for x in value.decode().split(":")]
            numbers += [0] * (5 - len(numbers))  # a bucket of sent and failed only
            if now_s - numbers[0] < _HOUR_S:
                at, sent, failed, delivered, read = numbers[:5]
                seconds.append((at, sent, failed, delivered, read))
        elif name.startswith("m:"):
            _, minute, kind = name.split(":")
            bucket = minutes.setdefault(int(minute) * 60, [0, 0, 0, 0])
            bucket["sfdr".index(kind)] += int(value)
    return JobSeries(
        seconds=sorted(seconds),
        minutes=sorted((at, s, f, d, r) for at, (s, f, d, r) in minutes.items()),
    )


async def get_series(request: Request) -> Response:
    state = state_of(request)
    tenant = authenticate(request)
    job_id = request.path_params["job_id"]
    if await jobs.read(state.redis, job_id, tenant) is None:
        raise ApiError(404, "not_found", "no such job")
    raw = cast(dict[bytes, bytes], await state.redis.hgetall(keys.JobKeys.of(job_id).series))
    return json_response(parse(raw, int(time.time())))
