"""Latency-bound delivery, and latency to first send behind a big job.

    .venv/bin/python bench/latency.py [--messages 100000] [--concurrency 2000]
        [--latency-ms 200] [--big 1000000] [--skip-small | --skip-bound]

1. Latency-bound (issue 14, goal 2): fakegraph answering after --latency-ms (200), one
   consumer with FANOUT_CONCURRENCY=--concurrency (2000) and no page limit, ONE job of
   --messages recipients. The ceiling is min(concurrency / latency, what the sink serves at that
   concurrency), the second measured in the same run by a bare loop of the same HTTP pool
   (shared.provider's MessengerClient, uvloop, its own process, as the consumer). Prints msgs/s
   (submit to completed), the ceiling, the ratio (target >= 0.8), the most chunks the job had
   out at once (released - acked, polled; FANOUT_WINDOW alone allows 8) and the consumer's peak
   RSS (VmHWM; target < 150 MiB).
2. Small behind big: a 10-recipient job submitted right behind a 1,000,000-recipient one (20 ms
   provider, default concurrency): how long until the small job's first message was sent and
   until it completed, next to how long the big one would take at its rate. The release window
   is what keeps the small job from queueing behind the big one, also now that it follows demand.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import PAGE_TOKEN, ROOT, Harness, job_body, wait

from shared import keys

BARE = textwrap.dedent(
    """
    import asyncio, sys, time, uvloop
    from shared.provider import MessengerClient
    url, n, conc, token = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    async def main():
        client = MessengerClient(url, "v21.0", conc, 30.0)
        head = client.head(token)
        it = iter(range(n))
        async def worker():
            for i in it:
                body = ('{"recipient":{"id":"%d"},"message":{"text":"Hello"},'
                        '"messaging_type":"UPDATE"}' % (10**12 + i)).encode()
                await client.send(head, body)
        t = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(conc)))
        print(n / (time.perf_counter() - t))
        await client.close()
    uvloop.run(main())
    """
)


def peak_rss_mib(pid: int) -> float:
    """The process's peak resident set (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_s(pid: int) -> float:
    """CPU seconds the process has used (user + system)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def latency_bound(messages: int, concurrency: int, latency_ms: int) -> None:
    with Harness(FANOUT_RATE_LIMIT="0", FANOUT_CONCURRENCY=str(concurrency)) as h:
        r = h.redis()
        h.fakegraph("--latency-ms", str(latency_ms))
        bare = subprocess.run(
            [sys.executable, "-c", BARE, h.env["FANOUT_GRAPH_URL"], str(messages)]
            + [str(concurrency), PAGE_TOKEN],
            env={**h.env, "PYTHONPATH": str(ROOT)},
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        sink = float(bare.stdout.split()[-1])
        api = h.producer()
        consumer = h.consumer()
        wait(lambda: r.exists("fanout:{0}:work"), "consumer")
        time.sleep(1.0)  # the consumer's readers are blocked on their streams
        cpu_before = cpu_s(consumer.pid)
        started = time.perf_counter()
        answer = api.post("/v1/jobs", json=job_body(messages))
        answer.raise_for_status()
        job_id = str(answer.json()["job_id"])
        job_hash = keys.JobKeys.of(job_id).hash
        most_out = 0
        while True:
            status, released, acked = r.hmget(job_hash, "status", "released", "acked")
            most_out = max(most_out, int(released or 0) - int(acked or 0))
            if status in (b"completed", b"failed", b"cancelled"):
                break
            time.sleep(0.01)
        took = time.perf_counter() - started
        busy = (cpu_s(consumer.pid) - cpu_before) / took
        rss = peak_rss_mib(consumer.pid)
        load = os.getloadavg()[0]
        job = api.get(f"/v1/jobs/{job_id}").json()
        stamps = r.hmget(job_hash, "started_at", "finished_at")
        running_s = (int(stamps[1] or 0) - int(stamps[0] or 0)) / 1000
    rate = job["sent"] / took
    ceiling = min(concurrency / (latency_ms / 1000), sink)
    print(
        f"\none job of {messages:,}, 1 consumer, FANOUT_CONCURRENCY={concurrency}, "
        f"{latency_ms} ms provider, {os.cpu_count()} cores (shared machine)"
    )
    print(f"{'concurrency / latency':44s} {concurrency / (latency_ms / 1000):10,.0f} msgs/s")
    print(f"{'bare loop, same pool, same sink (the sink)':44s} {sink:10,.0f} msgs/s")
    print(f"{'fanout, submit to completed':44s} {rate:10,.0f} msgs/s")
    print(f"{'ratio fanout / ceiling (target >= 0.8)':44s} {rate / ceiling:10.2f}")
    print(
        f"{'  (first send to completed only)':44s} {job['sent'] / running_s / ceiling:10.2f} "
        f"({took - running_s:.2f} s of submit before the first send)"
    )
    print(f"{'most chunks of the job out at once':44s} {most_out:10d}")
    print(f"{'consumer peak RSS, VmHWM (target < 150)':44s} {rss:10.1f} MiB")
    print(f"{'consumer CPU during the job (1.0 = a core)':44s} {busy:10.2f}")
    print(f"{'machine load average (1 min)':44s} {load:10.1f}")
    print(f"{'sent / failed / total':44s} {job['sent']}/{job['failed']}/{job['total']}")


def small_behind_big(big_n: int) -> None:
    with Harness(FANOUT_RATE_LIMIT="0") as h:
        r = h.redis()
        h.fakegraph("--latency-ms", "20")
        api = h.producer()
        h.consumer()
        wait(lambda: r.exists("fanout:{0}:work"), "consumer")

        def submit(n: int, offset: int) -> str:
            answer = api.post("/v1/jobs", json=job_body(n, offset))
            answer.raise_for_status()
            return str(answer.json()["status_url"])

        big = submit(big_n, 0)
        wait(lambda: api.get(big).json()["sent"] >= 5_000, "the big job under way", 120)
        started = time.perf_counter()
        small = submit(10, 10**9)
        first: float | None = None
        done: float | None = None
        while first is None or done is None:
            state = api.get(small).json()
            now = time.perf_counter() - started
            if first is None and state["sent"] + state["failed"] > 0:
                first = now
            if state["status"] == "completed":
                done = now
            time.sleep(0.002)
        rate = api.get(big).json()["rate_per_s"] or 1
    print(f"\nsmall job (10) behind a {big_n:,}-recipient job, 1 consumer, 20 ms provider")
    print(f"{'first message of the small job sent after':44s} {first * 1000:8.0f} ms")
    print(f"{'small job completed after':44s} {done * 1000:8.0f} ms")
    print(
        f"{'the big job alone would take (its rate)':44s} {big_n / rate:8.0f} s "
        f"({rate:,.0f} msgs/s)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=2000)
    parser.add_argument("--latency-ms", type=int, default=200)
    parser.add_argument("--big", type=int, default=1_000_000)
    parser.add_argument("--skip-small", action="store_true", help="only part 1")
    parser.add_argument("--skip-bound", action="store_true", help="only part 2")
    args = parser.parse_args()
    if not args.skip_bound:
        latency_bound(args.messages, args.concurrency, args.latency_ms)
    if not args.skip_small:
        small_behind_big(args.big)
    return 0


if __name__ == "__main__":
    sys.exit(main())
