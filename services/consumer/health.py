"""The consumer's probe and metrics endpoints on FANOUT_METRICS_PORT (0 turns them off)."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError

from services.consumer.worker import Consumer


def create_app(consumer: Consumer) -> web.Application:
    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        if not consumer.ready or consumer.stopping.is_set():
            return web.json_response({"status": "not ready"}, status=503)
        try:
            await consumer.redis.ping()
        except (RedisError, OSError):
            return web.json_response({"status": "unavailable", "redis": False}, status=503)
        return web.json_response({"status": "ok", "redis": True})

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app


async def start(consumer: Consumer, port: int) -> web.AppRunner | None:
    if port == 0:
        return None
    runner = web.AppRunner(create_app(consumer), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "0.0.0.0", port).start()
    return runner
