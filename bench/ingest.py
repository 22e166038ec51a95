"""Ingest: a 1,000,000-recipient CSV upload, against a bare redis-py loop in the same run.

    .venv/bin/python bench/ingest.py [--recipients 1000000]

Starts its own redis-server and producer, writes a CSV (id, first_name, city), and prints:
  - fanout: POST /v1/jobs (multipart) until 202, in recipients/s, and the producer's peak RSS
    (VmHWM) during it;
  - baseline: the same rows XADDed by redis-py, pipelined 1,000 per round trip, one entry a
    recipient (what a hand-rolled producer would do), in recipients/s;
  - the ratio fanout / baseline.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import PAGE, Harness


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def write_csv(path: Path, n: int) -> None:
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["id", "first_name", "city"])
        for i in range(n):
            out.writerow([10**15 + i, f"Name{i % 997}", "Oslo" if i % 3 else ""])


def baseline(r: redis.Redis, path: Path) -> float:
    started = time.perf_counter()
    with path.open(newline="") as f:
        rows = csv.reader(f)
        next(rows)
        pipe = r.pipeline(transaction=False)
        for i, (psid, name, city) in enumerate(rows, 1):
            pipe.xadd("bench:baseline", {"id": psid, "first_name": name, "city": city})
            if i % 1000 == 0:
                pipe.execute()
        pipe.execute()
        count = i
    return count / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--recipients", type=int, default=1_000_000)
    args = parser.parse_args()
    with Harness() as h:
        r = h.redis()
        api = h.producer()
        tmp = Path(h.tmp)
        path = tmp / "contacts.csv"
        write_csv(path, args.recipients)
        size_mb = path.stat().st_size / 2**20
        rss_idle = peak_rss_mb(h.producer_pid)
        spec = json.dumps(
            {
                "page_id": PAGE,
                "message": {"text": "Hi {{first_name}} from {{city|home}}"},
                "messaging_type": "UPDATE",
            }
        )
        started = time.perf_counter()
        with path.open("rb") as f:
            answer = api.post(
                "/v1/jobs",
                files={"spec": (None, spec), "recipients": ("contacts.csv", f, "text/csv")},
            )
        elapsed = time.perf_counter() - started
        answer.raise_for_status()
        total = answer.json()["total"]
        rss_peak = peak_rss_mb(h.producer_pid)
        r.flushall()
        bare = baseline(r, path)
        rate = total / elapsed
        print(
            f"\n{total:,} recipients, CSV {size_mb:.0f} MiB, {os.cpu_count()} cores, "
            f"Python {sys.version.split()[0]}"
        )
        print(
            f"{'fanout upload (multipart CSV -> 202)':42s} {rate:>10,.0f} recipients/s "
            f"({elapsed:.1f} s)"
        )
        print(f"{'bare redis-py pipelined XADD, same rows':42s} {bare:>10,.0f} recipients/s")
        print(f"{'ratio fanout / bare':42s} {rate / bare:>10.2f}")
        print(f"{'producer peak RSS (VmHWM)':42s} {rss_peak:>10.0f} MiB (idle {rss_idle:.0f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
