"""The consumer's probe and metrics endpoints on FANOUT_METRICS_PORT (0: a free port, logged).

Three GET routes for kubelets and Prometheus need no web framework: a plain asyncio server
reads the request line and answers with Connection: close. The port is bound (``bind``) before
the consumer opens Redis, so a second consumer on the same port stops at once with one line.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError

from services.consumer.worker import Consumer
from shared.listen import bound_port, listen

log = logging.getLogger("fanout.consumer")

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


def bind(port: int) -> socket.socket:
    """The probe socket; ``SettingsError`` naming FANOUT_METRICS_PORT if the port is taken."""
    hint = "give each consumer on a host its own port, or 0 for a free one"
    return listen("0.0.0.0", port, "FANOUT_METRICS_PORT", hint)


async def start(consumer: Consumer, sock: socket.socket) -> asyncio.Server:
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

    server = await asyncio.start_server(handle, sock=sock)
    # With FANOUT_METRICS_PORT=0 this line is the only place the port is told.
    log.info("probes and metrics listening", extra={"metrics_port": bound_port(sock)})
    return server
