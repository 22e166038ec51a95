"""How fast is fakegraph on its own? (prints figures; asserts nothing)

Starts `python -m services.fakegraph` as a subprocess and sends it 20,000 Send API POSTs
per run with keep-alive clients:

- aiohttp: one ClientSession, TCPConnector(limit=N), N requests in flight — the client
  the consumer uses;
- raw: a minimal asyncio+httptools client (N connections, one request in flight each),
  cheaper per request than aiohttp, to show the server's ceiling on a 2-core machine
  where client and server share the CPU;
- raw pipelined: the same with 8 requests pipelined per connection;
- wrk, if installed.

Besides wall-clock requests/s it reads the server process's CPU time from /proc, so
"req per server CPU-second" is what one core of fakegraph sustains whatever the client.

    .venv/bin/python bench/fakegraph_alone.py [--requests 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import aiohttp
import httptools

from services.fakegraph.server import loop_factory

ROOT = Path(__file__).resolve().parent.parent
PATH = "/v21.0/me/messages"
HEADERS = {"Authorization": "Bearer bench-token", "Content-Type": "application/json"}


def body(n: int) -> bytes:
    return b'{"recipient":{"id":"%d"},"message":{"text":"hello"},"messaging_type":"UPDATE"}' % n


# ---- the server subprocess ----


@dataclass
class Fakegraph:
    process: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process so far."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def hook(self, method: str, path: str) -> Any:
        request = urllib.request.Request(self.url + path, method=method, data=b"{}")
        with urllib.request.urlopen(request, timeout=10) as answer:
            return json.loads(answer.read())


@contextmanager
def fakegraph(*args: str) -> Iterator[Fakegraph]:
    """Start fakegraph on a free port; stop it (SIGTERM, then kill) on exit."""
    process = subprocess.Popen(
        [sys.executable, "-m", "services.fakegraph", "--port", "0", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
    )
    try:
        yield Fakegraph(process, _listening_port(process, deadline=time.monotonic() + 15))
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def _listening_port(process: subprocess.Popen[bytes], deadline: float) -> int:
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if selector.select(timeout=0.1):
                line = process.stdout.readline()
                if not line:
                    break
                event = json.loads(line)
                if event.get("event") == "fakegraph.listening":
                    return int(event["port"])
    raise RuntimeError("fakegraph did not start")


# ---- clients ----


async def aiohttp_client(url: str, total: int, in_flight: int) -> int:
    """`total` POSTs, `in_flight` at a time; returns how many answered 200."""
    numbers = iter(range(total))
    ok = 0

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal ok
        for n in numbers:
            async with session.post(url + PATH, data=body(n), headers=HEADERS) as answer:
                await answer.read()
                ok += answer.status == 200

    connector = aiohttp.TCPConnector(limit=in_flight)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(worker(session) for _ in range(in_flight)))
    return ok


class _RawConnection(asyncio.Protocol):
    """Keep-alive client connection sending prebuilt requests, `depth` pipelined."""

    def __init__(self, run: _RawRun, depth: int) -> None:
        self.run = run
        self.depth = depth
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.send(self.depth)

    def send(self, count: int) -> None:
        batch = self.run.take(count)
        if batch and self.transport is not None:
            self.transport.write(batch)

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_complete(self) -> None:
        self.run.answered(self.parser.get_status_code())
        self.send(1)


class _RawRun:
    def __init__(self, port: int, total: int) -> None:
        self.total = total
        self.sent = 0
        self.ok = 0
        self.done = 0
        self.finished = asyncio.get_running_loop().create_future()
        self.head = (
            b"POST %b HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nAuthorization: Bearer bench-token\r\n"
            b"Content-Type: application/json\r\nContent-Length: " % (PATH.encode(), port)
        )

    def take(self, count: int) -> bytes:
        parts = []
        for _ in range(min(count, self.total - self.sent)):
            payload = body(self.sent)
            parts.append(b"%b%d\r\n\r\n%b" % (self.head, len(payload), payload))
            self.sent += 1
        return b"".join(parts)

    def answered(self, status: int) -> None:
        self.done += 1
        self.ok += status == 200
        if self.done == self.total and not self.finished.done():
            self.finished.set_result(None)


async def raw_client(port: int, total: int, connections: int, depth: int = 1) -> int:
    loop = asyncio.get_running_loop()
    run = _RawRun(port, total)
    transports = []
    for _ in range(connections):
        transport, _protocol = await loop.create_connection(
            lambda: _RawConnection(run, depth), "127.0.0.1", port
        )
        transports.append(transport)
    await run.finished
    for transport in transports:
        transport.close()
    return run.ok


# ---- measuring ----


def measure(
    fake: Fakegraph, name: str, in_flight: int, total: int, client: Coroutine[Any, Any, int]
) -> None:
    fake.hook("POST", "/_fake/reset")
    cpu_before = fake.cpu_seconds()
    started = time.perf_counter()
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        ok = runner.run(client)
    elapsed = time.perf_counter() - started
    cpu = fake.cpu_seconds() - cpu_before
    delivered = fake.hook("GET", "/_fake/stats")["delivered"]
    per_cpu = f"{total / cpu:>10,.0f}" if cpu > 0 else f"{'n/a':>10}"
    print(
        f"{name:<22} {in_flight:>9} {total:>8} {elapsed:>7.2f} {total / elapsed:>10,.0f}"
        f" {100 * cpu / elapsed:>8.0f}% {per_cpu}"
        f"   ok={ok} delivered={delivered}",
        flush=True,
    )


def wrk(fake: Fakegraph, connections: int) -> None:
    """Optional: wrk with a POST script, if wrk is on PATH."""
    binary = shutil.which("wrk")
    if binary is None:
        return
    script = (
        'wrk.method = "POST"\n'
        f"wrk.body = '{body(1).decode()}'\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        'wrk.headers["Authorization"] = "Bearer bench-token"\n'
    )
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as lua:
        lua.write(script)
        lua.flush()
        result = subprocess.run(
            [binary, "-t1", f"-c{connections}", "-d5s", "-s", lua.name, fake.url + PATH],
            capture_output=True,
            text=True,
            timeout=60,
        )
    rate = next((x for x in result.stdout.splitlines() if "Requests/sec" in x), "?")
    print(f"{'wrk -t1':<22} {connections:>9} {'5 s':>8} {rate.strip()}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20_000)
    total = parser.parse_args().requests

    print(f"fakegraph alone: {total:,} POSTs per run, keep-alive, client on uvloop")
    print(f"cpus: {os.cpu_count()}  python: {sys.version.split()[0]}")
    print(
        f"{'client':<22} {'in flight':>9} {'requests':>8} {'seconds':>7} {'req/s':>10}"
        f" {'srv CPU':>9} {'req/srv-CPU-s':>10}"
    )
    with fakegraph() as fake:
        for in_flight in (64, 256):
            measure(fake, "aiohttp", in_flight, total, aiohttp_client(fake.url, total, in_flight))
        for in_flight in (64, 256):
            measure(
                fake, "raw keep-alive", in_flight, total, raw_client(fake.port, total, in_flight)
            )
        for connections in (8, 32):
            measure(
                fake,
                "raw pipelined x8",
                connections * 8,
                total,
                raw_client(fake.port, total, connections, depth=8),
            )
        for connections in (64, 256):
            wrk(fake, connections)
    if shutil.which("wrk") is None:
        print("(wrk not installed: skipped)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
