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
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import Harness, job_body, wait


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--big", type=int, default=1_000_000)
    args = parser.parse_args()
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

        big = submit(args.big, 0)
        wait(lambda: api.get(big).json()["sent"] >= 5_000, "the big job under way", 120)
        started = time.perf_counter()
        small = submit(10, 10**9)
        first = done = None
        while done is None:
            state = api.get(small).json()
            now = time.perf_counter() - started
            if first is None and state["sent"] + state["failed"] > 0:
                first = now
            if state["status"] == "completed":
                done = now
            time.sleep(0.002)
        rate = api.get(big).json()["rate_per_s"] or 1
    print(f"\nsmall job (10) behind a {args.big:,}-recipient job, 1 consumer, 20 ms provider")
    print(f"{'first message of the small job sent after':44s} {first * 1000:8.0f} ms")
    print(f"{'small job completed after':44s} {done * 1000:8.0f} ms")
    print(
        f"{'the big job alone would take (its rate)':44s} {args.big / rate:8.0f} s "
        f"({rate:,.0f} msgs/s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
