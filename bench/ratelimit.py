"""Fleet-wide rate limit: 3 consumers share one page's limit.

    .venv/bin/python bench/ratelimit.py [--limit 200] [--messages 6000] [--consumers 3]

Starts its own redis-server, fakegraph, producer and consumers with FANOUT_RATE_LIMIT set;
submits one job and prints what fakegraph saw: the most requests the page got in any
wall-clock second (goal: at most 10% over the limit) and the job's achieved rate as a share of
the limit (goal: at least 90%), plus the Redis round trips per message.
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
from delivery import API_TOKEN, PAGE, PAGE_TOKEN, ROOT, commands, free_port, wait


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--messages", type=int, default=6000)
    parser.add_argument("--consumers", type=int, default=3)
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="fanout-bench-")
    redis_port, graph_port, api_port = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "FANOUT_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "FANOUT_API_TOKENS": f"bench={API_TOKEN}",
        "FANOUT_PAGE_TOKENS": f"{PAGE}={PAGE_TOKEN}",
        "FANOUT_GRAPH_URL": f"http://127.0.0.1:{graph_port}",
        "FANOUT_RATE_LIMIT": str(args.limit),
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
                [
                    *py,
                    "services.fakegraph",
                    "--port",
                    str(graph_port),
                    "--latency-ms",
                    "30",
                    "--tokens",
                    f"{PAGE}={PAGE_TOKEN}",
                ],
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
        graph = httpx.Client(base_url=env["FANOUT_GRAPH_URL"])
        api = httpx.Client(
            base_url=f"http://127.0.0.1:{api_port}",
            headers={"Authorization": f"Bearer {API_TOKEN}"},
            timeout=60,
        )
        wait(r.ping, "redis")
        wait(lambda: graph.get("/_fake/stats").status_code == 200, "fakegraph")
        wait(lambda: api.get("/readyz").status_code == 200, "producer")
        for _ in range(args.consumers):
            procs.append(subprocess.Popen([*py, "services.cli", "consumer"], env=env, cwd=ROOT))
        wait(lambda: r.exists("fanout:{0}:work"), "consumers")
        body = {
            "page_id": PAGE,
            "message": {"text": "Hello"},
            "messaging_type": "UPDATE",
            "recipients": [str(10**12 + i) for i in range(args.messages)],
        }
        before = commands(r)
        started = time.perf_counter()
        job = api.post("/v1/jobs", json=body).json()
        while (status := api.get(job["status_url"]).json())["status"] != "completed":
            time.sleep(0.05)
        elapsed = time.perf_counter() - started
        after = commands(r)
        stats = graph.get("/_fake/stats").json()
        seconds = sorted(stats["per_second"][PAGE].items())
        full = [count for _, count in seconds[1:-1]]  # whole seconds only
        peak = stats["max_per_second"][PAGE]
        rate = args.messages / elapsed
        print(
            f"\n{args.consumers} consumers, limit {args.limit}/s, {args.messages:,} messages, "
            f"30 ms provider latency"
        )
        print(f"{'sent / duplicates':40s} {status['sent']:>8,} / {stats['duplicates']}")
        print(f"{'most requests in one second':40s} {peak:>8} ({peak / args.limit:.2f} x limit)")
        print(f"{'median of whole seconds':40s} {sorted(full)[len(full) // 2] if full else 0:>8}")
        print(f"{'achieved rate':40s} {rate:>8.1f} ({rate / args.limit:.2f} x limit)")
        print(
            f"{'redis round trips per message':40s} {(after[0] - before[0]) / args.messages:>8.3f}"
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
