"""Ingest: 1,000,000-recipient uploads, against reading the same CSV with the csv module.

    .venv/bin/python bench/ingest.py [--recipients 1000000] [--runs 1]

Starts its own redis-server and producer (real processes, loopback) and uploads, each to an
empty Redis, a CSV of ``id,first_name,city`` (the message uses both), of ``id,first_name``
(one name column, as a user's list often is) and of ``id`` alone, then the same ids as a JSON
job. For each it prints:
  - recipients/s from the first byte of the request to the 202 (what a user waits for);
  - the producer's CPU seconds for it (user+system, from /proc: steadier than wall time on a
    shared machine) and its peak RSS (VmHWM; a new producer process for each upload, since
    memory a process freed still counts in its RSS);
  - Redis memory per queued recipient: ``INFO memory`` used_memory after ÷ recipients, minus
    before (the job's hash, its backlog, the released window in the work stream);
  - the ratio against the baseline: the same file read with ``csv.reader`` in this process,
    rows counted and nothing else (no checks, no dedupe, no Redis, no HTTP): what reading the
    rows at all costs with the standard library, so > 1 means the whole upload takes less
    time than parsing its CSV the obvious way. Measured in the same run, just before each
    upload: recipients/s ÷ rows/s, and its CPU seconds ÷ the producer's (the steadier one
    when other work shares the machine).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import PAGE, Harness

MESSAGES = {
    3: "Hi {{first_name}} from {{city|home}}",
    2: "Hi {{first_name}}",
    1: "Hello",
}


def status(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def write_csv(path: Path, n: int, width: int) -> None:
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["id", "first_name", "city"][:width])
        for i in range(n):
            row = [10**15 + i, f"Name{i % 997}", "Oslo" if i % 3 else ""]
            out.writerow(row[:width])


def csv_module_read(path: Path) -> tuple[float, float]:
    """Rows/s and CPU seconds of reading the file with csv.reader, rows counted."""
    started, cpu = time.perf_counter(), time.process_time()
    with path.open(newline="", encoding="utf-8") as f:
        rows = sum(1 for _ in csv.reader(f)) - 1
    return rows / (time.perf_counter() - started), time.process_time() - cpu


def used_memory(r: redis.Redis) -> int:
    return int(r.info("memory")["used_memory"])


def upload(
    api: httpx.Client, r: redis.Redis, pid: int, post: dict[str, Any]
) -> tuple[int, float, float, float, float]:
    """total, seconds to the 202, producer CPU seconds, peak RSS MiB, Redis bytes/recipient."""
    r.flushall()
    before = used_memory(r)
    cpu = cpu_seconds(pid)
    started = time.perf_counter()
    answer = api.post("/v1/jobs", **post)
    elapsed = time.perf_counter() - started
    answer.raise_for_status()
    cpu = cpu_seconds(pid) - cpu
    total = int(answer.json()["total"])
    per = (used_memory(r) - before) / total
    return total, elapsed, cpu, status(pid, "VmHWM"), per


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--recipients", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=1, help="uploads of each kind")
    args = parser.parse_args()
    with Harness() as h:
        r = h.redis()
        api = h.producer()
        tmp = Path(h.tmp)
        files = {w: tmp / f"contacts{w}.csv" for w in (3, 2, 1)}
        for width, path in files.items():
            write_csv(path, args.recipients, width)
        rss_idle = status(h.producer_pid, "VmRSS")
        print(
            f"\n{args.recipients:,} recipients, {os.cpu_count()} cores, "
            f"Python {sys.version.split()[0]}, load average {os.getloadavg()[0]:.1f} "
            "(other work on the machine slows wall times; CPU seconds are steadier)"
        )
        print(f"producer idle RSS {rss_idle:.0f} MiB\n")
        head = f"{'upload':34s} {'recipients/s':>12s} {'s':>5s} {'CPU s':>6s} {'peak':>8s}"
        print(f"{head} {'B/recip.':>8s} {'÷ csv.reader: rate, CPU':>24s}")
        for width, path in files.items():
            spec = json.dumps(
                {"page_id": PAGE, "message": {"text": MESSAGES[width]}, "messaging_type": "UPDATE"}
            )
            columns = ",".join(["id", "first_name", "city"][:width])
            size = path.stat().st_size / 2**20
            for _ in range(args.runs):
                base, base_cpu = csv_module_read(path)
                api = h.producer()  # a new process: its own peak RSS
                pid = h.producer_pid
                with path.open("rb") as f:
                    post = {
                        "files": {"spec": (None, spec), "recipients": (path.name, f, "text/csv")}
                    }
                    total, secs, cpu, peak, per = upload(api, r, pid, post)
                rate = total / secs
                name = f"CSV {columns} ({size:.0f} MiB)"
                print(
                    f"{name:34s} {rate:>12,.0f} {secs:>5.2f} {cpu:>6.2f} {peak:>5.0f} MiB "
                    f"{per:>8.1f} {rate / base:>12.2f} {base_cpu / cpu:>11.2f}"
                    f"  (csv.reader {base:,.0f} rows/s, {base_cpu:.2f} s CPU)"
                )
        body = {
            "page_id": PAGE,
            "message": {"text": "Hello"},
            "messaging_type": "UPDATE",
            "recipients": [str(10**15 + i) for i in range(args.recipients)],
        }
        for _ in range(args.runs):
            api = h.producer()
            total, secs, cpu, peak, per = upload(api, r, h.producer_pid, {"json": body})
            name = "JSON job, same ids"
            print(
                f"{name:34s} {total / secs:>12,.0f} {secs:>5.2f} {cpu:>6.2f} {peak:>5.0f} MiB "
                f"{per:>8.1f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
