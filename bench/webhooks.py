"""Listening, measured (issue 12.6):

1. The receiver: signed POSTs/s (each a batch of 1-10 events) that ``POST /webhooks/messenger``
   takes on one producer process (verified, appended to the inbox, answered), against a bare
   starlette route that only answers 200, served the same way (uvicorn, uvloop, httptools).
   The load comes from keep-alive connections of a small raw HTTP/1.1 client, so the client
   costs as little as it can of the 2 cores it shares with the server.
2. Receipts: Redis bytes per recipient of a job for delivered/read correlation, for
   ``--people`` recipients (default 1,000,000) of one page: after every echo, after delivery
   watermarks for all, after reads for half (the records of read messages are dropped).

    .venv/bin/python bench/webhooks.py [--seconds 5] [--connections 32] [--people 1000000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import PAGE, Harness, free_port, wait
from services.consumer.receipts import locate
from shared import keys, webhooks

SECRET = "bench-app-secret"
_BARE = """
import uvicorn
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

async def ok(request):
    await request.body()
    return PlainTextResponse("EVENT_RECEIVED")

app = Starlette(routes=[Route("/webhooks/messenger", ok, methods=["POST"])])
uvicorn.run(app, host="127.0.0.1", port={port}, log_level="warning", access_log=False,
            loop="uvloop", http="httptools")
"""


def _bodies(count: int) -> list[bytes]:
    rng = random.Random(1)
    bodies = []
    now = int(time.time() * 1000)
    for i in range(count):
        events = [
            {
                "sender": {"id": str(10**15 + rng.randrange(10**6))},
                "recipient": {"id": PAGE},
                "timestamp": now + i,
                "delivery": {"watermark": now + i},
            }
            for _ in range(rng.randint(1, 10))
        ]
        payload = {"object": "page", "entry": [{"id": PAGE, "time": now, "messaging": events}]}
        bodies.append(json.dumps(payload).encode())
    return bodies


def _requests(bodies: list[bytes], port: int) -> list[bytes]:
    return [
        (
            f"POST /webhooks/messenger HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            "Content-Type: application/json\r\n"
            f"X-Hub-Signature-256: {webhooks.sign(SECRET, body)}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        + body
        for body in bodies
    ]


async def _one_connection(
    port: int, requests: list[bytes], until: float, counts: list[int]
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    i = random.randrange(len(requests))
    try:
        while time.monotonic() < until:
            writer.write(requests[i % len(requests)])
            i += 1
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            counts[0 if status == 200 else 1] += 1
    finally:
        writer.close()


async def _load(port: int, requests: list[bytes], seconds: float, connections: int) -> float:
    counts = [0, 0]
    until = time.monotonic() + seconds
    started = time.monotonic()
    await asyncio.gather(
        *(_one_connection(port, requests, until, counts) for _ in range(connections))
    )
    if counts[1]:
        raise SystemExit(f"{counts[1]} POSTs were not answered 200")
    return counts[0] / (time.monotonic() - started)


def receiver(seconds: float, connections: int) -> None:
    bodies = _bodies(500)
    with Harness(FANOUT_APP_SECRET=SECRET, FANOUT_WEBHOOK_VERIFY_TOKEN="v") as h:
        r = h.redis()
        api = h.producer()
        port = int(str(api.base_url).rsplit(":", 1)[1].rstrip("/"))
        bare_port = free_port()
        bare = subprocess.Popen(
            [sys.executable, "-c", _BARE.format(port=bare_port)], env=h.env, cwd=h.tmp
        )
        h.procs.append(bare)
        wait(lambda: _probe(bare_port), "the bare starlette app")
        ours = asyncio.run(_load(port, _requests(bodies, port), seconds, connections))
        base = asyncio.run(_load(bare_port, _requests(bodies, bare_port), seconds, connections))
        stored = sum(int(r.xlen(keys.inbox(s))) for s in range(4))
    mean = sum(len(b) for b in bodies) / len(bodies)
    print(f"receiver: {ours:,.0f} signed POSTs/s (1-10 events each, {mean:.0f} B mean) on one")
    print(f"  producer process, every one in Redis ({stored:,} inbox entries); bare starlette")
    print(f"  route {base:,.0f}/s; ratio {ours / base:.2f}")


def _probe(port: int) -> bool:
    import httpx

    return (
        httpx.post(f"http://127.0.0.1:{port}/webhooks/messenger", content=b"{}").status_code == 200
    )


def receipts(people: int) -> None:
    """Echo, deliver and read ``people`` recipients of one job through the real scripts."""
    from shared.scripts import _read

    port = free_port()
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:
        r = redis.Redis(port=port)
        wait(r.ping, "redis")
        echo = r.register_script(_read("receipt_echo"))
        mark = r.register_script(_read("receipt_mark"))
        job = keys.new_job_id(0)
        keep = 7 * 86400 * 1000
        now = int(time.time() * 1000)
        psids = [str(10**15 + i) for i in range(people)]
        where = [locate(p) for p in psids]
        jobs_key = keys.receipt_jobs(PAGE)

        def run(step: str) -> None:
            pipe = r.pipeline(transaction=False)
            for i, (bucket, fp) in enumerate(where):
                bucket_key = keys.receipts(PAGE, bucket)
                if step == "echo":
                    echo(keys=[bucket_key, jobs_key], args=[fp, job, i, now + i, keep], client=pipe)
                elif step == "delivery" or i % 2 == 0:
                    kind = "d" if step == "delivery" else "r"
                    args = [fp, kind, now + people + 1, keep, now + people]
                    mark(keys=[bucket_key, jobs_key], args=args, client=pipe)
                if len(pipe) >= 5000:
                    pipe.execute()
            pipe.execute()

        def used() -> int:
            return int(r.info("memory")["used_memory"])

        before = used()
        # The per-job delivered/read bitmaps at their full size (bit i = recipient i).
        r.setbit(keys.JobKeys.of(job).delivered, people - 1, 1)
        r.setbit(keys.JobKeys.of(job).read, people - 1, 1)
        started = time.perf_counter()
        for step, label in (
            ("echo", "after every echo"),
            ("delivery", "after every delivery watermark"),
            ("read", "after half of them read"),
        ):
            run(step)
            print(f"receipts, {label}: {(used() - before) / people:.2f} bytes per recipient")
        elapsed = time.perf_counter() - started
        print(f"  ({people:,} recipients of one page, {2.5 * people / elapsed:,.0f} events/s)")
    finally:
        server.kill()
        server.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--people", type=int, default=1_000_000)
    parser.add_argument("--only", choices=["receiver", "receipts"])
    args = parser.parse_args()
    os.environ.setdefault("FANOUT_LOG_LEVEL", "WARNING")
    if args.only != "receipts":
        receiver(args.seconds, args.connections)
    if args.only != "receiver":
        receipts(args.people)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
