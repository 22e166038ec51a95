"""Scaling out (issue 14, goal 5): aggregate throughput with 1, 2 and 4 consumers, on one Redis
and on a Redis Cluster (3 masters + 3 replicas, tests/redis_cluster.py), with the provider
stand-in answering after 200 ms.

    .venv/bin/python bench/scaling.py [--per-consumer 5000] [--concurrency 50] [--latency-ms 200]

Each run: fakegraph (--latency-ms), a producer, N consumers with FANOUT_CONCURRENCY=
--concurrency and no page limit, 4 shards, 8 jobs spread over them, N x --per-consumer
recipients in all (so each run lasts about as long); msgs/s from the first submit to the last
job completed. The concurrency is picked so the run is latency-bound, not CPU-bound, on 2
cores: one consumer can have at most concurrency / latency msgs/s (250 at 50 and 200 ms), and
4 of them 1,000/s. Printed per run: msgs/s, the ratio to 1 consumer on the same Redis, the
per-consumer efficiency (msgs/s / (N x 1 consumer's)), the ratio to the latency bound
N x concurrency / latency, and CPU: fanout's own processes (consumers, producer, fakegraph,
Redis) in cores, and the whole machine's busy share (other work on a shared machine included).
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
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from harness import API_TOKEN, PAGE, PAGE_TOKEN, ROOT, free_port, recipients, wait
from redis_cluster import Cluster

JOBS = 8


def cpu_s(pid: int) -> float:
    """CPU seconds the process has used (user + system); 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all cores since boot, from /proc/stat."""
    values = [float(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


class Run:
    """One measurement: msgs/s and the CPU it took."""

    def __init__(self, rate: float, own_cores: float, machine: float) -> None:
        self.rate = rate
        self.own_cores = own_cores  # fanout's processes, in cores
        self.machine = machine  # the whole machine's busy share, 0..1


def run(
    redis_url: str,
    redis_pids: list[int],
    consumers: int,
    messages: int,
    concurrency: int,
    latency_ms: int,
) -> Run:
    graph_port, api_port = free_port(), free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FANOUT_")},
        "FANOUT_REDIS_URL": redis_url,
        "FANOUT_API_TOKENS": f"bench={API_TOKEN}",
        "FANOUT_PAGE_TOKENS": f"{PAGE}={PAGE_TOKEN}",
        "FANOUT_GRAPH_URL": f"http://127.0.0.1:{graph_port}",
        "FANOUT_RATE_LIMIT": "0",
        "FANOUT_CONCURRENCY": str(concurrency),
        "FANOUT_SHARDS": "4",
        "FANOUT_METRICS_PORT": "0",
        "FANOUT_LOG_LEVEL": "WARNING",
    }
    py = [sys.executable, "-m"]
    graph = [*py, "services.fakegraph", "--port", str(graph_port), "--latency-ms", str(latency_ms)]
    procs = [
        subprocess.Popen(graph, env=env, cwd=ROOT, stdout=subprocess.DEVNULL),
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
        time.sleep(1.5)  # let the consumers join their groups before the clock starts
        pids = [p.pid for p in procs] + redis_pids
        cpu_before = sum(cpu_s(pid) for pid in pids)
        busy_before, total_before = machine_busy()
        per_job = messages // JOBS
        started = time.perf_counter()
        urls = []
        for j in range(JOBS):
            body = {
                "page_id": PAGE,
                "message": {"text": "Hello"},
                "messaging_type": "UPDATE",
                "recipients": recipients(per_job, j * 10**6),
            }
            answer = api.post("/v1/jobs", json=body)
            answer.raise_for_status()
            urls.append(answer.json()["status_url"])
        for url in urls:
            while api.get(url).json()["status"] != "completed":
                time.sleep(0.02)
        took = time.perf_counter() - started
        own = (sum(cpu_s(pid) for pid in pids) - cpu_before) / took
        busy_after, total_after = machine_busy()
        machine = (busy_after - busy_before) / max(1.0, total_after - total_before)
        return Run(per_job * JOBS / took, own, machine)
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
    parser.add_argument("--per-consumer", type=int, default=5_000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--latency-ms", type=int, default=200)
    parser.add_argument("--counts", default="1,2,4", help="consumer counts to run")
    args = parser.parse_args()
    counts = [int(n) for n in args.counts.split(",")]
    conc, latency = args.concurrency, args.latency_ms

    def measure(name: str, url: str, redis_pids: list[int]) -> list[tuple[str, int, Run]]:
        return [
            (name, n, run(url, redis_pids, n, n * args.per_consumer, conc, latency)) for n in counts
        ]

    rows: list[tuple[str, int, Run]] = []
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        binary = shutil.which("redis-server") or "redis-server"
        single = subprocess.Popen(
            [binary, "--port", str(port), "--save", "", "--appendonly", "no", "--dir", tmp],
            stdout=subprocess.DEVNULL,
        )
        try:
            probe = redis.Redis(host="127.0.0.1", port=port)
            wait(probe.ping, "redis")
            probe.close()
            rows += measure("1 Redis", f"redis://127.0.0.1:{port}/0", [single.pid])
        finally:
            single.terminate()
            single.wait()
    with tempfile.TemporaryDirectory() as tmp:
        cluster = Cluster(Path(tmp))
        try:
            rows += measure("cluster 3+3", cluster.url, [p.pid for p in cluster.procs.values()])
        finally:
            cluster.stop()
    print(
        f"\n{args.per_consumer:,} messages per consumer in {JOBS} jobs over 4 shards, "
        f"{latency} ms provider latency, FANOUT_CONCURRENCY={conc} per consumer "
        f"(bound: {conc / (latency / 1000):,.0f} msgs/s each), {os.cpu_count()} cores, "
        f"shared machine (load {os.getloadavg()[0]:.1f})"
    )
    print(
        f"{'redis':12s}{'consumers':>10s}{'msgs/s':>9s}{'÷ 1 consumer':>14s}"
        f"{'per-consumer eff.':>19s}{'÷ bound':>9s}{'fanout CPU':>12s}{'machine busy':>14s}"
    )
    for name, n, result in rows:
        one = next(r.rate for nm, k, r in rows if nm == name and k == counts[0]) / counts[0]
        bound = n * conc / (latency / 1000)
        print(
            f"{name:12s}{n:>10d}{result.rate:>9,.0f}{result.rate / (one * counts[0]):>14.2f}"
            f"{result.rate / (n * one):>19.2f}{result.rate / bound:>9.2f}"
            f"{result.own_cores:>8.2f} cores{result.machine:>13.0%}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
