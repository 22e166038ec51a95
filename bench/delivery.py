"""Delivery throughput, measured against a baseline from the same run.

    .venv/bin/python bench/delivery.py [--messages 50000] [--concurrency 256]

Starts its own redis-server and fakegraph (no added latency), then measures:
  1. baseline: a bare aiohttp loop (uvloop) POSTing the same messages to the same fakegraph
     at the same concurrency, in its own process, as the consumer is;
  2. fanout: producer -> Redis -> 1 consumer -> fakegraph, from POST /v1/jobs to completed;
  3. the time POST /v1/jobs takes for 100,000 recipients;
  4. Redis commands per delivered message (INFO commandstats before and after).
Prints msgs/s and the ratio fanout / baseline. No assertions: figures go in the README.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import httpx
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import API_TOKEN, PAGE, PAGE_TOKEN, ROOT, free_port, wait

__all__ = ["API_TOKEN", "PAGE", "PAGE_TOKEN", "ROOT", "commands", "free_port", "wait"]


BASELINE = textwrap.dedent(
    """
    import asyncio, sys, time, aiohttp, uvloop
    url, n, conc, token = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    async def main():
        conn = aiohttp.TCPConnector(limit=conc, limit_per_host=0)
        async with aiohttp.ClientSession(connector=conn) as s:
            it = iter(range(n))
            headers = {"Authorization": "Bearer " + token, "Content-Type": "application/json"}
            async def worker():
                for i in it:
                    body = ('{"recipient":{"id":"%d"},"message":{"text":"Hello"},'
                            '"messaging_type":"UPDATE"}' % (10**12 + i)).encode()
                    async with s.post(url, data=body, headers=headers) as r:
                        await r.read()
            t = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(conc)))
            print(n / (time.perf_counter() - t))
    uvloop.run(main())
    """
)


# Commands fanout only ever runs inside its Lua scripts, and the benchmark's own status polls.
_INSIDE_SCRIPTS = {
    "getbit",
    "setbit",
    "hincrby",
    "hset",
    "hget",
    "hmget",
    "exists",
    "time",
    "persist",
    "zadd",
    "xack",
    "xdel",
    "xadd",
    "lpop",
    "xpending",
    "xclaim",
    "xautoclaim",
}
_NOT_DELIVERY = {"info", "hgetall", "ping"}


POOL_BASELINE = textwrap.dedent(
    """
    import asyncio, sys, time, uvloop
    from shared.http1 import Pool
    url, n, conc, token = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    async def main():
        pool = Pool(url, conc, 30)
        auth = b"Authorization: Bearer %s\\r\\n" % token.encode()
        head = pool.frame_post("/v21.0/me/messages", auth)
        it = iter(range(n))
        async def worker():
            for i in it:
                body = (b'{"recipient":{"id":"%d"},"message":{"text":"Hello"},'
                        b'"messaging_type":"UPDATE"}' % (10**12 + i))
                await pool.post(head, body)
        t = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(conc)))
        print(n / (time.perf_counter() - t))
        await pool.close()
    uvloop.run(main())
    """
)


def bare_loop(source: str, url: str, n: int, concurrency: int) -> float:
    out = subprocess.run(
        [sys.executable, "-c", source, url, str(n), str(concurrency), PAGE_TOKEN],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return float(out.stdout.strip())


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def commands(r: redis.Redis) -> tuple[int, int]:
    """(round trips from clients, all commands including those run inside scripts)."""
    stats = r.info("commandstats")
    calls = {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}
    everything = sum(v for k, v in calls.items() if k not in _NOT_DELIVERY)
    top_level = sum(v for k, v in calls.items() if k not in _INSIDE_SCRIPTS | _NOT_DELIVERY)
    return top_level, everything


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--concurrency", type=int, default=256)
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="fanout-bench-")
    procs: list[subprocess.Popen[bytes]] = []
    redis_port, graph_port, api_port = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "FANOUT_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "FANOUT_API_TOKENS": f"bench={API_TOKEN}",
        "FANOUT_PAGE_TOKENS": f"{PAGE}={PAGE_TOKEN}",
        "FANOUT_GRAPH_URL": f"http://127.0.0.1:{graph_port}",
        "FANOUT_CONCURRENCY": str(args.concurrency),
        # The queue's own speed: no page limit (Meta's 300/s would make this a rate test).
        "FANOUT_RATE_LIMIT": "0",
        "FANOUT_METRICS_PORT": "0",
        "FANOUT_LOG_LEVEL": "WARNING",
    }
    py = [sys.executable, "-m"]
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
                [*py, "services.fakegraph", "--port", str(graph_port)],
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

        graph_url = env["FANOUT_GRAPH_URL"]
        n, conc = args.messages, args.concurrency
        baseline = bare_loop(BASELINE, f"{graph_url}/v21.0/me/messages", n, conc)
        pool_baseline = bare_loop(POOL_BASELINE, graph_url, n, conc)
        graph.post("/_fake/reset")

        body = {
            "page_id": PAGE,
            "message": {"text": "Hello"},
            "messaging_type": "UPDATE",
            "recipients": [str(10**12 + i) for i in range(args.messages)],
        }
        before = commands(r)
        consumer = subprocess.Popen([*py, "services.cli", "consumer"], env=env, cwd=ROOT)
        procs.append(consumer)
        wait(lambda: r.exists("fanout:{0}:work"), "consumer")
        cpu_before = cpu_seconds(consumer.pid)
        started = time.perf_counter()
        job = api.post("/v1/jobs", json=body).json()
        while api.get(job["status_url"]).json()["status"] != "completed":
            time.sleep(0.01)
        fanout = args.messages / (time.perf_counter() - started)
        cpu_per_message_us = (cpu_seconds(consumer.pid) - cpu_before) / args.messages * 1e6
        consumer_rss = peak_rss_mb(consumer.pid)
        after = commands(r)
        round_trips = (after[0] - before[0]) / args.messages
        inside = (after[1] - before[1]) / args.messages
        delivered = graph.get("/_fake/stats").json()

        big = {**body, "recipients": [str(10**12 + i) for i in range(100_000)]}
        t = time.perf_counter()
        api.post("/v1/jobs", json=big).raise_for_status()
        submit_100k = time.perf_counter() - t

        print(
            f"\nmachine: {os.cpu_count()} cores, Python {sys.version.split()[0]}; "
            f"{args.messages:,} messages, {args.concurrency} in flight"
        )
        print(f"{'fanout (producer->redis->consumer)':40s} {fanout:10,.0f} msgs/s")
        print(f"{'bare aiohttp loop':40s} {baseline:10,.0f} msgs/s")
        print(f"{'bare loop on fanout HTTP pool':40s} {pool_baseline:10,.0f} msgs/s")
        print(f"{'ratio fanout / bare aiohttp loop':40s} {fanout / baseline:10.2f}")
        print(f"{'ratio fanout / bare loop, same pool':40s} {fanout / pool_baseline:10.2f}")
        print(f"{'redis round trips per message':40s} {round_trips:10.3f}")
        print(f"{'consumer CPU per message':40s} {cpu_per_message_us:10.1f} us")
        print(f"{'consumer peak RSS':40s} {consumer_rss:10.0f} MiB")
        print(f"{'redis commands per message, in Lua too':40s} {inside:10.3f}")
        print(f"{'POST /v1/jobs, 100,000 recipients':40s} {submit_100k * 1000:10,.0f} ms")
        print(
            f"{'fakegraph delivered / duplicates':40s} {delivered['delivered']:>10,} / "
            f"{delivered['duplicates']}"
        )
    finally:
        for p in reversed(procs):  # consumer first, so it drains while Redis is still there
            p.terminate()
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
