"""Delivery throughput and its Redis cost, measured against baselines from the same run.

    .venv/bin/python bench/delivery.py [--messages 50000] [--concurrency 256]
                                       [--rates 40,300] [--limited-seconds 10]

Starts its own redis-server and fakegraph (no added latency), then measures:
  1. baselines: a bare aiohttp loop (uvloop), and a bare loop on fanout's own HTTP pool,
     POSTing the same messages to the same fakegraph at the same concurrency, each in its own
     process as the consumer is (and the CPU each spends per message);
  2. fanout: producer -> Redis -> 1 consumer -> fakegraph on a page with no limit, from POST
     /v1/jobs to completed: msgs/s, the ratio to the bare loop on the same pool (issue 14,
     goal 1), the consumer's and Redis's CPU per message, and the same ratio in CPU per
     message (every process on the path: steadier than the rates on a shared machine);
  3. what recording costs Redis (issue 14, goal 3), on that unlimited page and on pages limited
     to each of ``--rates`` messages/s (``--limited-seconds`` of messages each):
       round trips per message  Redis's socket reads (INFO stats total_reads_processed) while
                                the job ran, less the benchmark's own polls: each request or
                                pipeline a client sends is read at least once, so this counts
                                every client's round trips (producer, consumer, upkeep), a
                                large pipeline or script call sometimes twice
       script calls per message EVALSHA (INFO commandstats)
       commands per message     every command Redis ran, inside Lua too
       Redis CPU per message    INFO cpu used_cpu_sys + used_cpu_user
  4. the time POST /v1/jobs takes for 100,000 recipients.
No assertions: figures go in the README. The machine may be shared: run it several times.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import API_TOKEN, PAGE, PAGE_TOKEN, ROOT, free_port, wait

sys.path.insert(0, str(ROOT))
from shared.keys import JobKeys

__all__ = ["API_TOKEN", "PAGE", "PAGE_TOKEN", "ROOT", "free_port", "wait"]


def limited_page(i: int) -> str:
    """The page of the i-th limited run; its rate comes from FANOUT_PAGE_RATE_LIMITS."""
    return str(2001 + i)


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


@dataclass
class Loop:
    rate: float  # msgs/s
    cpu_us: float  # the loop's own CPU per message
    graph_cpu_us: float  # fakegraph's CPU per message meanwhile


@dataclass
class Cost:
    """What one job cost Redis, per delivered message."""

    round_trips: float
    scripts: float
    commands: float
    cpu_us: float


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def bare_loop(source: str, url: str, n: int, concurrency: int, graph_pid: int) -> Loop:
    cpu, graph_cpu = children_cpu_s(), cpu_seconds(graph_pid)
    out = subprocess.run(
        [sys.executable, "-c", source, url, str(n), str(concurrency), PAGE_TOKEN],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return Loop(
        float(out.stdout.strip()),
        (children_cpu_s() - cpu) / n * 1e6,
        (cpu_seconds(graph_pid) - graph_cpu) / n * 1e6,
    )


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class RedisMeter:
    """Redis's own counters, before and after a job; the benchmark's own calls left out."""

    def __init__(self, r: redis.Redis) -> None:
        self.r = r
        self.own = 0  # round trips this benchmark made meanwhile (polls, INFO)
        self._start = self._read()

    def _read(self) -> tuple[int, int, int, float]:
        info = self.r.info("everything")
        self.own += 1
        scripts = int(info.get("cmdstat_evalsha", {}).get("calls", 0))
        scripts += int(info.get("cmdstat_eval", {}).get("calls", 0))
        cpu = float(info["used_cpu_sys"]) + float(info["used_cpu_user"])
        return (
            int(info["total_reads_processed"]),
            scripts,
            int(info["total_commands_processed"]),
            cpu,
        )

    def poll(self, key: str) -> object:
        self.own += 1
        return self.r.hget(key, "status")

    def cost(self, messages: int) -> Cost:
        end = self._read()
        reads, scripts, commands, cpu = (b - a for a, b in zip(self._start, end, strict=True))
        # Our INFO and HGET calls are reads and commands too (the last INFO's read is counted
        # in its own answer, so every one of ours counts once).
        return Cost(
            (reads - self.own) / messages,
            scripts / messages,
            (commands - self.own) / messages,
            cpu / messages * 1e6,
        )


def run_job(api: httpx.Client, r: redis.Redis, body: Mapping[str, object], poll_s: float) -> Cost:
    meter = RedisMeter(r)
    job = api.post("/v1/jobs", json=body)
    job.raise_for_status()
    key = JobKeys.of(job.json()["job_id"]).hash
    while meter.poll(key) != b"completed":
        time.sleep(poll_s)
    recipients = body["recipients"]
    assert isinstance(recipients, list)
    return meter.cost(len(recipients))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--rates", default="40,300", help="limited pages' rates, msgs/s")
    parser.add_argument("--limited-seconds", type=float, default=10.0)
    args = parser.parse_args()
    rates = [int(x) for x in args.rates.split(",") if x.strip()]
    tmp = tempfile.mkdtemp(prefix="fanout-bench-")
    procs: list[subprocess.Popen[bytes]] = []
    redis_port, graph_port, api_port = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "FANOUT_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "FANOUT_API_TOKENS": f"bench={API_TOKEN}",
        "FANOUT_PAGE_TOKENS": ",".join(
            f"{page}={PAGE_TOKEN}" for page in [PAGE, *map(limited_page, range(len(rates)))]
        ),
        "FANOUT_PAGE_RATE_LIMITS": ",".join(
            f"{limited_page(i)}={rate}" for i, rate in enumerate(rates)
        ),
        "FANOUT_GRAPH_URL": f"http://127.0.0.1:{graph_port}",
        "FANOUT_CONCURRENCY": str(args.concurrency),
        # The queue's own speed: no page limit (Meta's 300/s would make this a rate test).
        "FANOUT_RATE_LIMIT": "0",
        "FANOUT_METRICS_PORT": "0",
        "FANOUT_LOG_LEVEL": "WARNING",
    }
    py = [sys.executable, "-m"]
    try:
        redis_server = subprocess.Popen(
            [
                shutil.which("redis-server") or "redis-server",
                *("--port", str(redis_port), "--save", "", "--appendonly", "no"),
                *("--dir", tmp),
            ],
            stdout=subprocess.DEVNULL,
        )
        procs.append(redis_server)
        fakegraph = subprocess.Popen(
            [*py, "services.fakegraph", "--port", str(graph_port)],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
        )
        procs.append(fakegraph)
        r = redis.Redis(port=redis_port)
        graph = httpx.Client(base_url=env["FANOUT_GRAPH_URL"])
        wait(r.ping, "redis")
        wait(lambda: graph.get("/_fake/stats").status_code == 200, "fakegraph")

        graph_url = env["FANOUT_GRAPH_URL"]
        n, conc = args.messages, args.concurrency
        baseline = bare_loop(BASELINE, f"{graph_url}/v21.0/me/messages", n, conc, fakegraph.pid)
        pool_baseline = bare_loop(POOL_BASELINE, graph_url, n, conc, fakegraph.pid)
        graph.post("/_fake/reset")

        producer = subprocess.Popen(
            [*py, "services.cli", "producer", "--port", str(api_port)], env=env, cwd=ROOT
        )
        procs.append(producer)
        api = httpx.Client(
            base_url=f"http://127.0.0.1:{api_port}",
            headers={"Authorization": f"Bearer {API_TOKEN}"},
            timeout=60,
        )
        wait(lambda: api.get("/readyz").status_code == 200, "producer")
        body = {
            "page_id": PAGE,
            "message": {"text": "Hello"},
            "messaging_type": "UPDATE",
            "recipients": [str(10**12 + i) for i in range(n)],
        }
        consumer = subprocess.Popen([*py, "services.cli", "consumer"], env=env, cwd=ROOT)
        procs.append(consumer)
        wait(lambda: r.exists("fanout:{0}:work"), "consumer")
        cpu_before = cpu_seconds(consumer.pid), cpu_seconds(fakegraph.pid)
        started = time.perf_counter()
        unlimited = run_job(api, r, body, 0.02)
        fanout = n / (time.perf_counter() - started)
        consumer_cpu_us = (cpu_seconds(consumer.pid) - cpu_before[0]) / n * 1e6
        graph_cpu_us = (cpu_seconds(fakegraph.pid) - cpu_before[1]) / n * 1e6
        consumer_rss = peak_rss_mb(consumer.pid)
        delivered = graph.get("/_fake/stats").json()

        limited: list[tuple[int, int, Cost]] = []
        for i, rate in enumerate(rates):
            count = max(1, int(rate * args.limited_seconds))
            limited_body = {
                **body,
                "page_id": limited_page(i),
                "recipients": [str(2 * 10**12 + i * 10**6 + j) for j in range(count)],
            }
            limited.append((rate, count, run_job(api, r, limited_body, 0.1)))

        big = {**body, "recipients": [str(10**12 + i) for i in range(100_000)]}
        t = time.perf_counter()
        api.post("/v1/jobs", json=big).raise_for_status()
        submit_100k = time.perf_counter() - t

        print(
            f"\nmachine: {os.cpu_count()} cores, Python {sys.version.split()[0]}; "
            f"{n:,} messages, {conc} in flight; load average now "
            f"{os.getloadavg()[0]:.1f} (a shared machine is noisy: run it several times)"
        )
        line = "{:44s} {:>10s}  {}"
        print(line.format("fanout (producer->redis->consumer)", f"{fanout:,.0f}", "msgs/s"))
        print(line.format("bare aiohttp loop", f"{baseline.rate:,.0f}", "msgs/s"))
        print(line.format("bare loop on fanout HTTP pool", f"{pool_baseline.rate:,.0f}", "msgs/s"))
        print(line.format("ratio fanout / bare aiohttp loop", f"{fanout / baseline.rate:.2f}", ""))
        print(
            line.format(
                "ratio fanout / bare loop, same pool", f"{fanout / pool_baseline.rate:.2f}", ""
            )
        )
        print(line.format("consumer CPU per message", f"{consumer_cpu_us:.1f}", "us"))
        print(line.format("bare pool loop CPU per message", f"{pool_baseline.cpu_us:.1f}", "us"))
        print(line.format("fakegraph CPU per message, fanout", f"{graph_cpu_us:.1f}", "us"))
        print(
            line.format(
                "fakegraph CPU per message, pool loop", f"{pool_baseline.graph_cpu_us:.1f}", "us"
            )
        )
        # What the ratio would be on two cores of its own, CPU-bound: the CPU each message
        # costs every process it passes through, the bare loop's path over fanout's. Steadier
        # than the rates when other work shares the machine.
        fanout_cpu = consumer_cpu_us + unlimited.cpu_us + graph_cpu_us
        pool_cpu = pool_baseline.cpu_us + pool_baseline.graph_cpu_us
        print(
            line.format(
                "ratio of CPU per message, pool loop / fanout",
                f"{pool_cpu / fanout_cpu:.2f}",
                f"({pool_cpu:.0f} us / {fanout_cpu:.0f} us, Redis included)",
            )
        )
        print(line.format("consumer peak RSS", f"{consumer_rss:.0f}", "MiB"))
        print(line.format("POST /v1/jobs, 100,000 recipients", f"{submit_100k * 1000:,.0f}", "ms"))
        print(
            line.format(
                "fakegraph delivered / duplicates",
                f"{delivered['delivered']:,}",
                f"/ {delivered['duplicates']}",
            )
        )
        print("\nRedis per delivered message (issue 14, goal 3):")
        head = "{:26s} {:>12s} {:>12s} {:>12s} {:>14s}"
        print(head.format("page", "round trips", "scripts", "commands", "Redis CPU us"))
        rows = [("unlimited", n, unlimited)] + [
            (f"limited {rate}/s", count, cost) for rate, count, cost in limited
        ]
        for name, count, cost in rows:
            print(
                head.format(
                    f"{name} ({count:,})",
                    f"{cost.round_trips:.3f}",
                    f"{cost.scripts:.3f}",
                    f"{cost.commands:.2f}",
                    f"{cost.cpu_us:.1f}",
                )
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
