"""The page limiter's scripts on a real Redis: permits never outrun the rate, cool-downs pause
everyone, grow while throttles continue and let a provider's hint win."""

from __future__ import annotations

import asyncio
import time

import redis
from conftest import RedisServer

from services.consumer.limiter import PageLimiter
from shared import keys
from shared.redisconn import connect
from shared.scripts import Scripts


def test_permits_follow_the_rate_across_limiters(redis_server: RedisServer) -> None:
    async def main() -> tuple[int, float]:
        client = connect(redis_server.url)
        scripts = Scripts(client)
        # Three "consumers" of one page at 200/s, each taking as fast as it can for 1 s.
        limiters = [PageLimiter(scripts, "7", 200, 50) for _ in range(3)]
        taken = 0
        start = time.monotonic()

        async def drain(limiter: PageLimiter) -> None:
            nonlocal taken
            while time.monotonic() - start < 1.0:
                got = await limiter.take(100)  # not `taken += await`: that loses updates
                taken += got

        await asyncio.gather(*(drain(limiter) for limiter in limiters))
        elapsed = time.monotonic() - start
        await client.aclose()
        return taken, elapsed

    taken, elapsed = asyncio.run(main())
    # At most rate * elapsed + a 50 ms burst + the last batch each limiter was waiting for.
    assert taken <= 200 * elapsed + 10 + 3 * 10, (taken, elapsed)
    assert taken >= 150, taken  # and the rate is really used


def test_cool_down_pauses_grows_and_hint_wins(redis_server: RedisServer, r: redis.Redis) -> None:
    async def main() -> list[float | None]:
        client = connect(redis_server.url)
        scripts = Scripts(client)
        first = PageLimiter(scripts, "9", 100, 50)
        other = PageLimiter(scripts, "9", 100, 50)
        results: list[float | None] = []
        results.append(await first.cool_down(None))  # 1 s
        results.append(await first.cool_down(None))  # known locally: no new pause
        # Another consumer of the page is refused permits while the pause lasts.
        granted, wait_ms, _ = await scripts.take_permits(keys=[keys.rate("9")], args=[100, 50, 5])
        results.append(float(granted))
        results.append(float(wait_ms))
        # Throttles during the pause (requests already in flight) do not escalate it.
        results.append(await other.cool_down(None))
        await client.aclose()
        return results

    pause, repeated, granted, wait_ms, during = asyncio.run(main())
    assert pause == 1.0 and repeated is None
    assert granted == 0 and 0 < wait_ms <= 1000
    assert during is not None and during <= 1.0

    # The next throttle after the pause has ended doubles it; a longer hint wins.
    def end_pause() -> None:  # as if the pause had just run out
        seconds, micros = r.time()
        r.hset(keys.rate("9"), "pause_until", str(seconds * 1000 + micros / 1000 - 1))

    end_pause()

    async def again() -> tuple[float | None, float | None]:
        client = connect(redis_server.url)
        scripts = Scripts(client)
        doubled = await PageLimiter(scripts, "9", 100, 50).cool_down(None)
        end_pause()
        hinted = await PageLimiter(scripts, "9", 100, 50).cool_down(30.0)
        await client.aclose()
        return doubled, hinted

    doubled, hinted = asyncio.run(again())
    assert doubled == 2.0
    assert hinted == 30.0
