"""Fleet-wide rate limit: 3 consumers share one page's limit.

    .venv/bin/python bench/ratelimit.py [--limit 200] [--messages 6000] [--consumers 3]

Starts its own redis-server, fakegraph, producer and consumers with FANOUT_RATE_LIMIT set;
submits one job and prints what fakegraph saw: the most requests the page got in any
wall-clock second (goal: at most 10% over the limit) and the job's achieved rate as a share of
the limit (goal: at least 90%), plus the Redis round trips per message.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from delivery import commands
from harness import PAGE, PAGE_TOKEN, Harness, job_body, wait


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--messages", type=int, default=6000)
    parser.add_argument("--consumers", type=int, default=3)
    args = parser.parse_args()
    with Harness(FANOUT_RATE_LIMIT=str(args.limit)) as h:
        r = h.redis()
        graph = h.fakegraph("--latency-ms", "30", "--tokens", f"{PAGE}={PAGE_TOKEN}")
        api = h.producer()
        for _ in range(args.consumers):
            h.consumer()
        wait(lambda: r.exists("fanout:{0}:work"), "consumers")
        before = commands(r)
        started = time.perf_counter()
        job = api.post("/v1/jobs", json=job_body(args.messages)).json()
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
    print(f"{'redis round trips per message':40s} {(after[0] - before[0]) / args.messages:>8.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
