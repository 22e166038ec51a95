"""Throughput on one Redis vs a Redis Cluster (3 masters + 3 replicas), with 1, 2 and 4 consumers.

    .venv/bin/python bench/scaling.py [--messages 30000]

Each run: fakegraph with 20 ms latency (so more consumers can help: in-flight requests, not one
core, are the limit), a producer, N consumers with FANOUT_CONCURRENCY=128 and no page limit,
4 shards, jobs spread over them; prints delivered msgs/s, from the first submit to the last
job completed. On this 2-core machine the provider stand-in, Redis and the consumers share two
cores, so more consumers show the queue is not the ceiling rather than linear growth.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from delivery import API_TOKEN, PAGE, PAGE_TOKEN, ROOT, free_port, wait
from redis_cluster import Cluster


def run(redis_url: str, consumers: int, messages: int) -> float:
    graph_port, api_port = free_port(), free_port()
    env = {
        **os.environ,
        "FANOUT_REDIS_URL": redis_url,
        "FANOUT_API_TOKENS": f"bench={API_TOKEN}",
        "FANOUT_PAGE_TOKENS": f"{PAGE}={PAGE_TOKEN}",
        "FANOUT_GRAPH_URL": f"http://127.0.0.1:{graph_port}",
        "FANOUT_RATE_LIMIT": "0",
        "FANOUT_CONCURRENCY": "128",
        "FANOUT_SHARDS": "4",
        "FANOUT_METRICS_PORT": "0",
        "FANOUT_LOG_LEVEL": "WARNING",
    }
    py = [sys.executable, "-m"]
    procs = [
        subprocess.Popen(
            [*py, "services.fakegraph", "--port", str(graph_port), "--latency-ms", "20"],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
        ),
        subprocess.Popen(
            [*py, "services.cli", "producer", "--port", str(api_port)], env=env, cwd=ROOT
        ),
    ]
    try:
        api = httpx.Client(
            base_url=f"http://127.0.0.1:{api_port}",
            headers={"Authorization": f"Bearer {API_TOKEN}"},
            timeout=60,
        )
        wait(lambda: api.get("/readyz").status_code == 200, "producer")
        procs += [
            subprocess.Popen([*py, "services.cli", "consumer"], env=env, cwd=ROOT)
            for _ in range(consumers)
        ]
        time.sleep(1.0)  # let the consumers join their groups before the clock starts
        per_job = messages // 8
        started = time.perf_counter()
        urls = []
        for j in range(8):
            body = {
                "page_id": PAGE,
                "message": {"text": "Hello"},
                "messaging_type": "UPDATE",
                "recipients": [str(10**12 + j * 10**6 + i) for i in range(per_job)],
            }
            urls.append(api.post("/v1/jobs", json=body).json()["status_url"])
        for url in urls:
            while api.get(url).json()["status"] != "completed":
                time.sleep(0.02)
        return per_job * 8 / (time.perf_counter() - started)
    finally:
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=30_000)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        single = subprocess.Popen(
            ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no", "--dir", tmp],
            stdout=subprocess.DEVNULL,
        )
        try:
            probe = redis.Redis(host="127.0.0.1", port=port)
            wait(probe.ping, "redis")
            probe.close()
            for n in (1, 2, 4):
                rows.append(("1 Redis", n, run(f"redis://127.0.0.1:{port}/0", n, args.messages)))
        finally:
            single.terminate()
            single.wait()
    with tempfile.TemporaryDirectory() as tmp:
        cluster = Cluster(Path(tmp))
        try:
            for n in (1, 2, 4):
                rows.append(("cluster 3+3", n, run(cluster.url, n, args.messages)))
        finally:
            cluster.stop()
    base = rows[0][2]
    print(
        f"\n{args.messages:,} messages in 8 jobs over 4 shards, 20 ms provider latency, "
        f"{os.cpu_count()} cores"
    )
    print(f"{'redis':14s}{'consumers':>10s}{'msgs/s':>10s}{'÷ 1 Redis, 1 consumer':>24s}")
    for name, n, rate in rows:
        print(f"{name:14s}{n:>10d}{rate:>10,.0f}{rate / base:>24.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
