"""The producer's metrics: an ASGI middleware counting requests by route template, and
``/metrics``, which reads the stream and job gauges from Redis when scraped and exports the
producer's registry only (the consumers' series come from the consumers)."""

from __future__ import annotations

import re
import time
from typing import Any, cast, get_args

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.asyncio import Redis
from redis.exceptions import ResponseError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared import keys, metrics
from shared.models import JobStatusName

# Every status is a series, 0 included, so "jobs by status" never hides one.
STATUSES: tuple[str, ...] = get_args(JobStatusName)
# Long polls: their duration is the client's choice, not our latency.
_SSE_ROUTE = "/v1/jobs/{job_id}/events"
_WAIT = re.compile(rb"(?:^|&)wait=")  # POST /v1/jobs?wait=: held until the job ends


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
        scope["fanout.route"] = route  # the audit line of a refusal names the template
        long_poll = route == _SSE_ROUTE or (
            route == "/v1/jobs" and _WAIT.search(scope.get("query_string", b"")) is not None
        )
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        if route == _SSE_ROUTE:
            metrics.SSE_STREAMS.inc()
        try:
            await self.app(scope, receive, send_status)
        finally:
            if route == _SSE_ROUTE:
                metrics.SSE_STREAMS.dec()
            metrics.HTTP_REQUESTS.labels(route, scope["method"], str(status)).inc()
            if not long_poll:
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
    if group.get("lag") is None:
        # Redis cannot tell (an entry after the last delivered one was deleted). KEDA's scaler
        # reads the lag through go-redis, which turns that nil into -1 (command.go,
        # XInfoGroupsCmd.readReply), and scales on -1: as good as no lag. The gauge says what
        # KEDA sees; the FanoutStreamLagUnknown alert says when that is wrong.
        return -1, pending
    return int(group["lag"]), pending


async def _dead_letters_added(redis: Redis, shard: int) -> int:
    """Entries ever added to the dead stream: a count kept by Redis (XINFO STREAM
    entries-added, Redis 7+), so no consumer crash can lose it; the stream itself is capped."""
    try:
        info: dict[str, Any] = await redis.xinfo_stream(keys.dead_stream(shard))
    except ResponseError:  # no dead letter yet
        return 0
    return int(info.get("entries-added", info.get("length", 0)))


async def refresh(redis: Redis, shards: int) -> None:
    totals = dict.fromkeys(STATUSES, 0)
    for shard in range(shards):
        lag, pending = await _stream_gauges(redis, shard)
        metrics.STREAM_LAG.labels(str(shard)).set(lag)
        metrics.STREAM_PENDING.labels(str(shard)).set(pending)
        metrics.DEAD_LETTERS_STORED.set((str(shard),), await _dead_letters_added(redis, shard))
        # Processed batches are deleted, so the inbox's length is its backlog.
        metrics.INBOX_BACKLOG.labels(str(shard)).set(await redis.xlen(keys.inbox(shard)))
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
    return Response(generate_latest(metrics.PRODUCER), media_type=CONTENT_TYPE_LATEST)
