"""The producer's metrics: an ASGI middleware counting requests by route template, and
``/metrics``, which reads the stream and job gauges from Redis when scraped."""

from __future__ import annotations

import time
from typing import Any, cast

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.asyncio import Redis
from redis.exceptions import ResponseError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared import keys, metrics

STATUSES = ("pending", "running", "completed", "failed", "cancelled")


class HttpMetrics:
    """Counts every request under its route template (``/v1/jobs/{job_id}``), so ids never
    become label values; unmatched paths count as ``other``."""

    def __init__(self, app: ASGIApp, routes: list[Route]) -> None:
        self.app = app
        self.routes = routes

    def _template(self, scope: Scope) -> str:
        for route in self.routes:
            match, _ = route.matches(scope)
            if match is not Match.NONE:
                return route.path
        return "other"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = self._template(scope)
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            metrics.HTTP_REQUESTS.labels(route, scope["method"], str(status)).inc()
            metrics.HTTP_DURATION.labels(route).observe(time.perf_counter() - started)


async def _stream_gauges(redis: Redis, shard: int) -> tuple[int, int]:
    stream = keys.work_stream(shard)
    try:
        groups: list[dict[str, Any]] = await redis.xinfo_groups(stream)
    except ResponseError:  # no such stream yet
        return 0, 0
    group = next((g for g in groups if g["name"] in (keys.GROUP, keys.GROUP.encode())), None)
    if group is None:
        return int(await redis.xlen(stream)), 0
    pending = int(group["pending"])
    if group.get("lag") is not None:
        return int(group["lag"]), pending
    # Redis cannot tell (an entry after the last delivered one was deleted): acknowledged
    # entries are deleted, so what is left beyond the pending ones is undelivered.
    return int(await redis.xlen(stream)) - pending, pending


async def refresh(redis: Redis, shards: int) -> None:
    totals = dict.fromkeys(STATUSES, 0)
    for shard in range(shards):
        lag, pending = await _stream_gauges(redis, shard)
        metrics.STREAM_LAG.labels(str(shard)).set(lag)
        metrics.STREAM_PENDING.labels(str(shard)).set(pending)
        counts = cast(dict[bytes, bytes], await redis.hgetall(keys.job_stats(shard)))
        for raw_status, count in counts.items():
            name = raw_status.decode()
            if name in totals:
                totals[name] += int(count)
    for status, total in totals.items():
        metrics.JOBS.labels(status).set(total)


async def metrics_endpoint(request: Request) -> Response:
    state = request.app.state.fanout
    await refresh(state.redis, state.settings.shards)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
