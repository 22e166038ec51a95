"""The consumer's probe and metrics endpoints on FANOUT_METRICS_PORT (0 turns them off).

Three GET routes for kubelets and Prometheus need no web framework: a plain asyncio server
reads the request line and answers with Connection: close.
"""

from __future__ import annotations

import asyncio
import json

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError

from services.consumer.worker import Consumer

_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


async def _ready(consumer: Consumer) -> tuple[int, dict[str, object]]:
    if not consumer.ready or consumer.stopping.is_set():
        return 503, {"status": "not ready"}
    try:
        await consumer.redis.ping()
    except (RedisError, OSError):
        return 503, {"status": "unavailable", "redis": False}
    return 200, {"status": "ok", "redis": True}


async def answer(consumer: Consumer, method: str, path: str) -> tuple[int, str, bytes]:
    if method != "GET":
        return 405, "application/json", b'{"status": "method not allowed"}'
    path = path.split("?", 1)[0]
    if path == "/metrics":
        return 200, CONTENT_TYPE_LATEST, generate_latest()
    if path == "/healthz":
        return 200, "application/json", b'{"status": "ok"}'
    if path == "/readyz":
        status, body = await _ready(consumer)
        return status, "application/json", json.dumps(body).encode()
    return 404, "application/json", b'{"status": "not found"}'


async def start(consumer: Consumer, port: int) -> asyncio.Server | None:
    if port == 0:
        return None

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = await asyncio.wait_for(reader.readline(), 5)
            while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                pass  # headers are not needed
            method, path, *_ = request_line.decode("latin-1").split(" ") + ["", ""]
            status, content_type, body = await answer(consumer, method, path)
            head = (
                f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + body)
            await writer.drain()
        except (TimeoutError, ConnectionError, UnicodeDecodeError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, "0.0.0.0", port)
