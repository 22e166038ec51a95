"""Latency to first send: a 10-recipient job submitted right behind a 1,000,000-recipient one.

    .venv/bin/python bench/latency.py [--big 1000000]

Starts its own redis-server, fakegraph (20 ms latency), producer and one consumer (no page
limit), submits the big job, waits until it is under way, submits the small one and prints how
long until the small job's first message was sent and until it completed, next to how long the
big one would take at the measured rate. The release window is what keeps the small job from
queueing behind the big one.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
from delivery import API_TOKEN, PAGE, PAGE_TOKEN, ROOT, free_port, wait


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--big", type=int, default=1_000_000)
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="fanout-latency-")
    redis_port, graph_port, api_port = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "FANOUT_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "FANOUT_API_TOKENS": f"bench={API_TOKEN}",
        "FANOUT_PAGE_TOKENS": f"{PAGE}={PAGE_TOKEN}",
        "FANOUT_GRAPH_URL": f"http://127.0.0.1:{graph_port}",
        "FANOUT_RATE_LIMIT": "0",
        "FANOUT_METRICS_PORT": "0",
        "FANOUT_LOG_LEVEL": "WARNING",
    }
    py = [sys.executable, "-m"]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(
            subprocess.Popen(
                [
                    shutil.which("redis-server") or "redis-server",
                    "--port",
                    str(redis_port),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    tmp,
                ],
                stdout=subprocess.DEVNULL,
            )
        )
        procs.append(
            subprocess.Popen(
                [*py, "services.fakegraph", "--port", str(graph_port), "--latency-ms", "20"],
                env=env,
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
            )
        )
        procs.append(
            subprocess.Popen(
                [*py, "services.cli", "producer", "--port", str(api_port)], env=env, cwd=ROOT
            )
        )
        r = redis.Redis(port=redis_port)
        api = httpx.Client(
            base_url=f"http://127.0.0.1:{api_port}",
            headers={"Authorization": f"Bearer {API_TOKEN}"},
            timeout=120,
        )
        wait(r.ping, "redis")
        wait(lambda: api.get("/readyz").status_code == 200, "producer")
        procs.append(subprocess.Popen([*py, "services.cli", "consumer"], env=env, cwd=ROOT))
        wait(lambda: r.exists("fanout:{0}:work"), "consumer")

        def job(n: int, offset: int) -> str:
            body = {
                "page_id": PAGE,
                "message": {"text": "Hello"},
                "messaging_type": "UPDATE",
                "recipients": [str(10**12 + offset + i) for i in range(n)],
            }
            answer = api.post("/v1/jobs", json=body)
            answer.raise_for_status()
            return str(answer.json()["status_url"])

        big = job(args.big, 0)
        wait(lambda: api.get(big).json()["sent"] >= 5_000, "the big job under way", 120)
        started = time.perf_counter()
        small = job(10, 10**9)
        first = done = None
        while done is None:
            state = api.get(small).json()
            now = time.perf_counter() - started
            if first is None and state["sent"] + state["failed"] > 0:
                first = now
            if state["status"] == "completed":
                done = now
            time.sleep(0.002)
        big_state = api.get(big).json()
        rate = big_state["rate_per_s"] or 1
        print(f"\nsmall job (10) behind a {args.big:,}-recipient job, 1 consumer, 20 ms provider")
        print(f"{'first message of the small job sent after':44s} {first * 1000:8.0f} ms")
        print(f"{'small job completed after':44s} {done * 1000:8.0f} ms")
        print(
            f"{'the big job alone would take (its rate)':44s} {args.big / rate:8.0f} s "
            f"({rate:,.0f} msgs/s)"
        )
    finally:
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
