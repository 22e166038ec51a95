"""Receipts on a real Redis (services/consumer/receipts.py and its scripts): Meta's watermark
semantics (delivery: sent before it; read: at or before), any arrival order, replays, several
jobs to one person, strangers sharing a bucket, and jobs already swept."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import redis
from conftest import RedisServer

from services.consumer.receipts import Receipts, locate
from shared import keys
from shared.redisconn import connect
from shared.scripts import Scripts

PAGE = "1001"
Steps = Callable[[Receipts], Awaitable[None]]


def _job(r: redis.Redis, total: int = 10, shard: int = 0) -> str:
    job_id = keys.new_job_id(shard)
    fields = {"total": total, "status": "running", "page_id": PAGE}
    r.hset(keys.JobKeys.of(job_id).hash, mapping=fields)
    return job_id


def _run(server: RedisServer, steps: Steps) -> None:
    async def main() -> None:
        client = connect(server.url)
        try:
            await steps(Receipts(client, Scripts(client), 7 * 86400))
        finally:
            await client.aclose()

    asyncio.run(main())


def _counts(server: RedisServer, job_id: str) -> tuple[int, int]:
    delivered, read = server.client.hmget(keys.JobKeys.of(job_id).hash, ["delivered", "read"])
    return int(delivered or 0), int(read or 0)


def test_watermarks_cover_what_was_sent_before_them(redis_server: RedisServer) -> None:
    job = _job(redis_server.client)
    t = int(time.time() * 1000)

    async def steps(rx: Receipts) -> None:
        await rx.echo(PAGE, "7", job, 3, t)
        await rx.watermark(PAGE, "7", "d", t)  # "before" the watermark: not this one
        assert _counts(redis_server, job) == (0, 0)
        await rx.watermark(PAGE, "7", "d", t + 1)
        assert _counts(redis_server, job) == (1, 0)
        await rx.watermark(PAGE, "7", "r", t)  # "at or before": this one
        assert _counts(redis_server, job) == (1, 1)

    _run(redis_server, steps)
    k = keys.JobKeys.of(job)
    assert redis_server.client.getbit(k.delivered, 3) == 1
    assert redis_server.client.getbit(k.read, 3) == 1
    # The job page's chart gets the flips too, per minute: one delivered, one read.
    series = redis_server.client.hgetall(k.series)
    per_minute = {f.decode().rsplit(":", 1)[1]: int(v) for f, v in series.items() if f[:2] == b"m:"}
    assert per_minute == {"d": 1, "r": 1}


def test_receipts_before_their_echo_still_count_and_replays_count_nothing(
    redis_server: RedisServer,
) -> None:
    job = _job(redis_server.client)
    t = int(time.time() * 1000)

    async def steps(rx: Receipts) -> None:
        await rx.watermark(PAGE, "8", "r", t + 5)  # the read overtakes everything
        await rx.watermark(PAGE, "9", "d", t + 5)
        await rx.echo(PAGE, "8", job, 0, t)
        await rx.echo(PAGE, "9", job, 1, t)
        assert _counts(redis_server, job) == (2, 1)  # read implies delivered
        for _ in range(3):  # Meta retries, a reclaim replays
            await rx.echo(PAGE, "8", job, 0, t)
            await rx.echo(PAGE, "9", job, 1, t)
            await rx.watermark(PAGE, "8", "r", t + 5)
            await rx.watermark(PAGE, "9", "d", t + 5)
        assert _counts(redis_server, job) == (2, 1)
        await rx.watermark(PAGE, "9", "r", t + 6)
        assert _counts(redis_server, job) == (2, 2)

    _run(redis_server, steps)


def test_one_watermark_covers_every_job_sent_to_the_person_before_it(
    redis_server: RedisServer,
) -> None:
    first, second, later = (_job(redis_server.client, shard=s) for s in (0, 1, 1))
    t = int(time.time() * 1000)

    async def steps(rx: Receipts) -> None:
        await rx.echo(PAGE, "5", first, 4, t)
        await rx.echo(PAGE, "5", second, 9, t + 10)
        await rx.echo(PAGE, "5", later, 2, t + 100)  # sent after the watermark
        await rx.watermark(PAGE, "5", "r", t + 50)

    _run(redis_server, steps)
    assert [_counts(redis_server, j) for j in (first, second, later)] == [(1, 1), (1, 1), (0, 0)]


def test_a_strangers_watermark_in_the_same_bucket_flips_nothing(
    redis_server: RedisServer,
) -> None:
    bucket = locate("1000")[0]
    stranger = next(str(p) for p in range(1001, 10**7) if locate(str(p))[0] == bucket)
    job = _job(redis_server.client)
    t = int(time.time() * 1000)

    async def steps(rx: Receipts) -> None:
        await rx.echo(PAGE, "1000", job, 1, t)
        await rx.watermark(PAGE, stranger, "r", t + 10)
        assert _counts(redis_server, job) == (0, 0)
        await rx.watermark(PAGE, "1000", "d", t + 10)
        assert _counts(redis_server, job) == (1, 0)

    _run(redis_server, steps)


def test_a_job_of_another_page_is_not_touched(redis_server: RedisServer) -> None:
    job = _job(redis_server.client)
    t = int(time.time() * 1000)

    async def steps(rx: Receipts) -> None:
        await rx.echo("2002", "4", job, 0, t)  # metadata naming our job, on another page
        await rx.watermark("2002", "4", "r", t + 1)

    _run(redis_server, steps)
    assert _counts(redis_server, job) == (0, 0)


def test_a_swept_job_is_not_recreated_and_read_records_are_dropped(
    redis_server: RedisServer,
) -> None:
    r = redis_server.client
    job, gone = _job(r), _job(r)
    r.delete(keys.JobKeys.of(gone).hash)  # the retention sweep came first
    t = int(time.time() * 1000)

    async def steps(rx: Receipts) -> None:
        await rx.echo(PAGE, "6", job, 0, t)
        await rx.echo(PAGE, "6", gone, 0, t)
        await rx.watermark(PAGE, "6", "r", t + 1)

    _run(redis_server, steps)
    assert not r.exists(keys.JobKeys.of(gone).hash, keys.JobKeys.of(gone).read)
    assert _counts(redis_server, job) == (1, 1)
    # Both records were read: nothing left to learn, so the bucket holds no 13-byte record
    # of them (only the person's watermarks would be kept, and these covered something).
    assert r.strlen(keys.receipts(PAGE, locate("6")[0])) == 0
