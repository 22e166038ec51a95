"""Redis memory per tracked (page, PSID) of the 24-hour window, and per suppressed person.

    .venv/bin/python bench/window_memory.py [--people 1000000] [--small-pages 200]

Starts its own redis-server and writes through the real code (``shared.window.touch``, one Lua
call per inbound event, as the webhook consumer does; ``shared.suppressions.add``), then prints
INFO memory's ``used_memory`` growth per person, MEMORY USAGE summed over the keys written, and
the buckets' encodings. Budget (issue 12): at most 64 bytes per tracked (page, PSID). PSIDs are
16 random digits, as Meta's are. Also a fleet of small pages (1,000 people each), where the
per-bucket overhead weighs more. No assertions: figures go in the README.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from collections import Counter
from pathlib import Path

import redis
from redis.asyncio import Redis as AsyncRedis

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from harness import Harness

from shared import suppressions, window

_TASKS = 64


def people(n: int, rng: random.Random) -> list[str]:
    return [str(rng.randrange(10**15, 10**16)) for _ in range(n)]


async def touch_all(url: str, pairs: list[tuple[str, str]], now_ms: int) -> float:
    client = AsyncRedis.from_url(url, max_connections=_TASKS)
    started = time.perf_counter()

    async def worker(part: list[tuple[str, str]]) -> None:
        for page_id, psid in part:
            # A spread of the last week, as real interactions are.
            await window.touch(client, page_id, psid, now_ms - random.randrange(7 * 86400_000))

    await asyncio.gather(*(worker(pairs[i::_TASKS]) for i in range(_TASKS)))
    elapsed = time.perf_counter() - started
    await client.aclose()
    return elapsed


def used(r: redis.Redis) -> int:
    return int(r.info("memory")["used_memory"])


def usage(r: redis.Redis, pattern: str) -> tuple[int, int, Counter[str]]:
    """Bytes by MEMORY USAGE over the keys matching ``pattern``, their count and encodings."""
    total, count, encodings = 0, 0, Counter[str]()
    for key in r.scan_iter(pattern, count=10_000):
        total += int(r.memory_usage(key, samples=0) or 0)
        encodings[r.object("encoding", key).decode()] += 1
        count += 1
    return total, count, encodings


def measure(r: redis.Redis, url: str, label: str, pairs: list[tuple[str, str]]) -> None:
    r.flushall()
    before = used(r)
    seconds = asyncio.run(touch_all(url, pairs, int(time.time() * 1000)))
    grown = used(r) - before
    total, count, encodings = usage(r, "fanout:page:*:win:*")
    n = len(pairs)
    print(
        f"{label}: {n:,} (page, PSID) in {count:,} buckets {dict(encodings)};"
        f" used_memory +{grown / n:.1f} B/person, MEMORY USAGE {total / n:.1f} B/person;"
        f" {n / seconds:,.0f} touches/s"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--people", type=int, default=1_000_000)
    parser.add_argument("--small-pages", type=int, default=200)
    parser.add_argument("--suppressed", type=int, default=100_000)
    args = parser.parse_args()
    rng = random.Random(7)
    with Harness() as h:
        r = h.redis()
        url = h.env["FANOUT_REDIS_URL"]
        print(f"redis {r.info('server')['redis_version']}, window bucket tiers {window.TIERS}")
        measure(r, url, "one page", [("1001", p) for p in people(args.people, rng)])
        small = [(str(5000 + i), p) for i in range(args.small_pages) for p in people(1000, rng)]
        measure(r, url, f"{args.small_pages} pages of 1,000", small)

        r.flushall()
        before = used(r)
        listed = people(args.suppressed, rng)

        async def suppress() -> None:
            client = AsyncRedis.from_url(url)
            for i in range(0, len(listed), 1000):
                await suppressions.add(client, "1001", listed[i : i + 1000], "551/1545041", 1)
            await client.aclose()

        asyncio.run(suppress())
        grown = used(r) - before
        total, count, encodings = usage(r, "fanout:page:*:supp:*")
        n = args.suppressed
        print(
            f"suppressions: {n:,} on one page; used_memory +{grown / n:.1f} B/person,"
            f" MEMORY USAGE {total / n:.1f} B/person"
        )


if __name__ == "__main__":
    main()
