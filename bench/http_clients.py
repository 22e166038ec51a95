"""Which HTTP client should the consumer use? (prints figures; asserts nothing)

Against one fakegraph subprocess, 20,000 Send API POSTs per run at 64 and 256 in flight,
each client on uvloop, keep-alive, N worker coroutines sharing one client:

- httpx:          httpx.AsyncClient, default transport, Limits(max_connections=N)
- aiohttp:        aiohttp.ClientSession(TCPConnector(limit=N))
- httpx+aiohttp:  httpx.AsyncClient(transport=httpx_aiohttp.AiohttpTransport(limits=...)),
                  only if `httpx-aiohttp` is installed (not a project dependency)
- fanout http1:   the consumer's own pool (shared/http1.py), as MessengerClient drives it

httpx's default transport degrades as connections grow: httpcore's pool re-scans every
connection for every queued request (O(N*M), encode/httpx#3215, encode/httpcore#1035).

A run stops early at --budget seconds (and says so) to keep the whole bench under two
minutes; the rate is over the requests actually answered.

    .venv/bin/python bench/http_clients.py [--requests 20000] [--budget 15]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import aiohttp
import httpx
from fakegraph_alone import HEADERS, PATH, body, fakegraph  # bench/ is on sys.path

from services.fakegraph.server import loop_factory

IN_FLIGHT = (64, 256)

Send = Callable[[int], Awaitable[int]]
"""POST message number n; return the HTTP status."""


@dataclass
class Result:
    client: str
    in_flight: int
    answered: int
    ok: int
    seconds: float
    stopped_early: bool

    @property
    def rate(self) -> float:
        return self.answered / self.seconds


async def _drive(send: Send, total: int, in_flight: int, budget: float) -> tuple[int, int, bool]:
    numbers = iter(range(total))
    deadline = time.monotonic() + budget
    answered = ok = 0
    stopped = False

    async def worker() -> None:
        nonlocal answered, ok, stopped
        for n in numbers:
            if time.monotonic() > deadline:
                stopped = True
                return
            status = await send(n)
            answered += 1
            ok += status == 200

    await asyncio.gather(*(worker() for _ in range(in_flight)))
    return answered, ok, stopped


async def run_httpx(url: str, total: int, in_flight: int, budget: float) -> tuple[int, int, bool]:
    limits = httpx.Limits(max_connections=in_flight)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30.0) as client:

        async def send(n: int) -> int:
            return (await client.post(PATH, content=body(n), headers=HEADERS)).status_code

        return await _drive(send, total, in_flight, budget)


async def run_aiohttp(url: str, total: int, in_flight: int, budget: float) -> tuple[int, int, bool]:
    connector = aiohttp.TCPConnector(limit=in_flight)
    async with aiohttp.ClientSession(url, connector=connector) as session:

        async def send(n: int) -> int:
            async with session.post(PATH, data=body(n), headers=HEADERS) as answer:
                await answer.read()
                return answer.status

        return await _drive(send, total, in_flight, budget)


async def run_http1(url: str, total: int, in_flight: int, budget: float) -> tuple[int, int, bool]:
    from shared.http1 import Pool

    pool = Pool(url, in_flight, 30.0)
    auth = "".join(f"{k}: {v}\r\n" for k, v in HEADERS.items() if k != "Content-Type")
    head = pool.frame_post(PATH, auth.encode())
    try:

        async def send(n: int) -> int:
            return (await pool.post(head, body(n))).status

        return await _drive(send, total, in_flight, budget)
    finally:
        await pool.close()


async def run_httpx_aiohttp(
    url: str, total: int, in_flight: int, budget: float
) -> tuple[int, int, bool]:
    from httpx_aiohttp import AiohttpTransport

    transport = AiohttpTransport(limits=httpx.Limits(max_connections=in_flight))
    async with httpx.AsyncClient(base_url=url, transport=transport, timeout=30.0) as client:

        async def send(n: int) -> int:
            return (await client.post(PATH, content=body(n), headers=HEADERS)).status_code

        return await _drive(send, total, in_flight, budget)


Runner = Callable[[str, int, int, float], Coroutine[Any, Any, tuple[int, int, bool]]]


def _sniffio_note() -> None:
    if importlib.util.find_spec("sniffio") is None:
        print(
            "note: sniffio is not importable here. httpcore then retries `import sniffio`"
            " (a failed import, never cached) for every lock it makes, several per request,"
            " which costs httpx about a fifth of its speed at 64 in flight on the 2-core"
            " reference VM; install sniffio for httpx's best figure."
        )


def _clients() -> list[tuple[str, Runner]]:
    clients: list[tuple[str, Runner]] = [
        ("httpx", run_httpx),
        ("aiohttp", run_aiohttp),
        ("fanout http1", run_http1),
    ]
    try:
        import httpx_aiohttp  # noqa: F401
    except ImportError:
        print("(httpx-aiohttp not installed: its row is skipped)")
    else:
        clients.append(("httpx+aiohttp", run_httpx_aiohttp))
    return clients


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--budget", type=float, default=15.0, help="seconds per run at most")
    options = parser.parse_args()

    print(f"HTTP clients vs fakegraph: {options.requests:,} POSTs per run, uvloop, keep-alive")
    print(f"cpus: {os.cpu_count()}  python: {sys.version.split()[0]}")
    _sniffio_note()
    results: list[Result] = []
    with fakegraph() as fake:
        for name, run in _clients():
            for in_flight in IN_FLIGHT:
                fake.hook("POST", "/_fake/reset")
                started = time.perf_counter()
                with asyncio.Runner(loop_factory=loop_factory()) as runner:
                    answered, ok, stopped = runner.run(
                        run(fake.url, options.requests, in_flight, options.budget)
                    )
                result = Result(
                    name, in_flight, answered, ok, time.perf_counter() - started, stopped
                )
                results.append(result)
                note = " (stopped at budget)" if stopped else ""
                print(
                    f"  {name:<14} {in_flight:>4} in flight: {result.rate:>9,.0f} msgs/s"
                    f"  ({answered:,} in {result.seconds:.1f} s, {ok:,} ok){note}",
                    flush=True,
                )

    baseline = {r.in_flight: r.rate for r in results if r.client == "aiohttp"}
    print()
    print(f"| {'client':<14} | {'in flight':>9} | {'msgs/s':>9} | {'vs aiohttp':>10} |")
    print(f"|{'-' * 16}|{'-' * 11}:|{'-' * 10}:|{'-' * 11}:|")
    for r in results:
        ratio = r.rate / baseline[r.in_flight] if baseline.get(r.in_flight) else float("nan")
        print(f"| {r.client:<14} | {r.in_flight:>9} | {r.rate:>9,.0f} | {ratio:>9.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
