"""What the WhatsApp tier check at submit costs per recipient (services/producer/whatsapp.py).

    .venv/bin/python bench/tier_check.py [--people 100000]

Starts its own redis-server. Three cases, each timed through ``whatsapp.reach`` on the same
recipients: a number nobody has written to (the window is skipped: one HMGET), a number with
people inside their window (window_inside.lua over every person not already reached), and a
portfolio that already reached half of the recipients in the last 24 h. No assertions:
figures go in the README.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

from redis.asyncio import Redis as AsyncRedis

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from harness import Harness

from services.producer import whatsapp
from shared import keys, window
from shared.settings import producer_settings

NUMBER = "106540352242922"


async def _run(url: str, people: int) -> None:
    redis = AsyncRedis.from_url(url)
    settings = producer_settings(
        {
            "FANOUT_API_TOKENS": "bench=t",
            "FANOUT_WA_NUMBERS": f"{NUMBER}=t",
            "FANOUT_WA_TIER_DEFAULT": "unlimited",
            "FANOUT_WA_TIERS": f"{NUMBER}=100000",
            "FANOUT_REDIS_URL": url,
        }
    )
    recipients = [f"44770{i:07d}" for i in range(people)]
    now_ms = int(time.time() * 1000)

    async def timed(case: str) -> None:
        started = time.perf_counter()
        found = await whatsapp.reach(redis, settings, NUMBER, recipients, now_ms)
        took = time.perf_counter() - started
        print(
            f"{case:<44} {people:>9,} recipients {took:6.2f} s"
            f" {took / found.looked_at * 1e6:6.1f} us each (would count {found.would_count:,},"
            f" looked at {found.looked_at:,})"
        )

    await timed("fresh number (nobody inside a window)")
    for person in recipients[::10]:  # a tenth inside their window
        await window.touch(redis, NUMBER, person, now_ms - 3_600_000)
    await timed("a tenth inside their window")
    half = dict.fromkeys(recipients[::2], now_ms - 3600000)
    await redis.zadd(keys.wa_reached(NUMBER), half)
    await timed("and half reached in the last 24 h")
    await redis.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--people", type=int, default=100_000)
    args = parser.parse_args()
    with Harness() as harness:
        harness.redis()
        asyncio.run(_run(harness.env["FANOUT_REDIS_URL"], args.people))


if __name__ == "__main__":
    main()
