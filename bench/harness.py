"""What every benchmark starts and stops: its own redis-server, fakegraph, a producer and
consumers, each a real process on loopback, all stopped (consumers first, so they drain while
Redis is still there) when the ``with`` block ends, also on error."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import redis

ROOT = Path(__file__).resolve().parent.parent
PAGE = "1001"
PAGE_TOKEN = "EAAbenchpagetoken"
API_TOKEN = "bench-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait(check: Callable[[], Any], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (httpx.HTTPError, OSError, redis.RedisError):
            pass
        time.sleep(0.02)
    raise RuntimeError(f"{what} did not start")


class Harness:
    def __init__(self, **env: str) -> None:
        self.tmp = tempfile.mkdtemp(prefix="fanout-bench-")
        self.procs: list[subprocess.Popen[bytes]] = []
        self.producer_pid = 0
        self.env = {
            **os.environ,
            "FANOUT_API_TOKENS": f"bench={API_TOKEN}",
            "FANOUT_PAGE_TOKENS": f"{PAGE}={PAGE_TOKEN}",
            "FANOUT_METRICS_PORT": "0",
            "FANOUT_LOG_LEVEL": "WARNING",
            **env,
        }

    def __enter__(self) -> Harness:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for proc in reversed(self.procs):
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def _start(self, args: list[str], quiet: bool = False) -> subprocess.Popen[bytes]:
        out = subprocess.DEVNULL if quiet else None
        proc = subprocess.Popen(args, env=self.env, cwd=ROOT, stdout=out)
        self.procs.append(proc)
        return proc

    def redis(self, url: str | None = None) -> redis.Redis:
        """Our own redis-server (or ``url``'s), as FANOUT_REDIS_URL for what starts next."""
        if url is None:
            port = free_port()
            binary = shutil.which("redis-server") or "redis-server"
            self._start(
                [
                    binary,
                    "--port",
                    str(port),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    self.tmp,
                ],
                quiet=True,
            )
            url = f"redis://127.0.0.1:{port}/0"
        self.env["FANOUT_REDIS_URL"] = url
        client = redis.Redis.from_url(url)
        wait(client.ping, "redis")
        return client

    def fakegraph(self, *args: str) -> httpx.Client:
        port = free_port()
        self._start([sys.executable, "-m", "services.fakegraph", "--port", str(port), *args], True)
        self.env["FANOUT_GRAPH_URL"] = f"http://127.0.0.1:{port}"
        graph = httpx.Client(base_url=self.env["FANOUT_GRAPH_URL"], timeout=60)
        wait(lambda: graph.get("/_fake/stats").status_code == 200, "fakegraph")
        return graph

    def producer(self) -> httpx.Client:
        port = free_port()
        proc = self._start([sys.executable, "-m", "services.cli", "producer", "--port", str(port)])
        self.producer_pid = proc.pid
        api = httpx.Client(
            base_url=f"http://127.0.0.1:{port}",
            headers={"Authorization": f"Bearer {API_TOKEN}"},
            timeout=600,
        )
        wait(lambda: api.get("/readyz").status_code == 200, "producer")
        return api

    def consumer(self) -> subprocess.Popen[bytes]:
        return self._start([sys.executable, "-m", "services.cli", "consumer"])


def recipients(n: int, offset: int = 0) -> list[str]:
    return [str(10**12 + offset + i) for i in range(n)]


def job_body(n: int, offset: int = 0, text: str = "Hello") -> dict[str, Any]:
    return {
        "page_id": PAGE,
        "message": {"text": text},
        "messaging_type": "UPDATE",
        "recipients": recipients(n, offset),
    }
