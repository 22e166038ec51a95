"""The ledger scripts on a real Redis: each is idempotent, so retries and zombies change nothing
twice."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import redis
from conftest import RedisServer, psids
from redis.asyncio import Redis

from services.consumer import ledger
from services.producer import jobs
from shared import keys
from shared.models import Failure, JobRequest, Message, Outcome
from shared.redisconn import connect
from shared.scripts import Scripts
from shared.settings import producer_settings

T = TypeVar("T")


def run(redis_server: RedisServer, make: Callable[[Redis, Scripts], Awaitable[T]]) -> T:
    async def main() -> T:
        client = connect(redis_server.url)
        try:
            return await make(client, Scripts(client))
        finally:
            await client.aclose()

    return asyncio.run(main())


def new_job(redis_server: RedisServer, n: int, window: int = 1) -> keys.JobKeys:
    request = JobRequest(
        page_id="1", message=Message("hi"), recipients=psids(n), messaging_type="UPDATE"
    )
    settings = producer_settings(
        {
            "FANOUT_API_TOKENS": "acme=t",
            "FANOUT_PAGE_TOKENS": "1=x",
            "FANOUT_SHARDS": "1",
            "FANOUT_CHUNK_SIZE": "10",
            "FANOUT_WINDOW": str(window),
        }
    )
    prepared = jobs.prepare(request, request.message, b"{}", "acme", settings, 0, None)

    async def make(client: Redis, scripts: Scripts) -> None:
        await client.xgroup_create(keys.work_stream(0), keys.GROUP, id="0", mkstream=True)
        await jobs.commit(client, scripts, prepared, window, 3600)

    run(redis_server, make)
    return keys.JobKeys.of(prepared.job_id)


def read_one(r: redis.Redis, k: keys.JobKeys) -> bytes:
    reply = r.xreadgroup(keys.GROUP, "c1", {k.work: ">"}, count=1)
    entry_id: bytes = reply[0][1][0][0]
    return entry_id


def test_begin_marks_attempted_once_and_reports_in_doubt(
    redis_server: RedisServer, r: redis.Redis
) -> None:
    k = new_job(redis_server, 10)

    async def twice(
        client: Redis, scripts: Scripts
    ) -> tuple[ledger.Begun, ledger.Begun, ledger.Begun]:
        first = await ledger.begin(scripts, k, 0, 10)
        second = await ledger.begin(scripts, k, 0, 10)
        third = await ledger.begin(scripts, k, 0, 10)
        return first, second, third

    first, second, third = run(redis_server, twice)
    assert first.status == "running" and first.states == "0" * 10
    assert second.states == "2" * 10
    assert third.states == "2" * 10
    # Counted per send: each redelivery resends the ten, each resend a possible duplicate.
    assert r.hget(k.hash, "indoubt") == b"20"
    assert r.bitcount(k.indoubt) == 10  # the recipients in doubt
    assert r.hget(k.hash, "status") == b"running"


def test_answers_recorded_as_they_arrive_count_once_and_doubts_per_send(
    redis_server: RedisServer, r: redis.Redis
) -> None:
    k = new_job(redis_server, 20, window=1)
    entry = read_one(r, k)
    failure = Failure(9, "10000000009", "551", "1545041", "unavailable", 1)
    early = Outcome([0, 1, 2], [failure], [5, 5])  # recipient 5 resent twice after lost answers

    async def go(client: Redis, scripts: Scripts) -> tuple[tuple[int, int], ...]:
        await ledger.begin(scripts, k, 0, 10)
        first = await ledger.record(scripts, k, early)
        again = await ledger.record(scripts, k, Outcome([0, 1, 2], [failure], []))
        # The chunk's finish carries every answer again, and no doubt (each was written before
        # its resend): nothing moves twice.
        done = await ledger.finish(scripts, k, entry, Outcome(list(range(9)), [failure], []))
        return first, again, (done.sent, done.failed)

    first, again, finished = run(redis_server, go)
    assert first == (3, 1) and again == (0, 0) and finished == (6, 0)
    h = r.hgetall(k.hash)
    assert (h[b"sent"], h[b"failed"], h[b"indoubt"], h[b"code:551"]) == (b"9", b"1", b"2", b"1")
    assert r.xlen(k.errors) == 1
    assert r.bitcount(k.indoubt) == 1


def test_finish_twice_counts_and_releases_once(redis_server: RedisServer, r: redis.Redis) -> None:
    k = new_job(redis_server, 20, window=1)
    entry = read_one(r, k)
    outcome = Outcome(
        list(range(9)), [Failure(9, "10000000009", "551", "1545041", "unavailable", 1)], []
    )

    async def twice(client: Redis, scripts: Scripts) -> tuple[ledger.Finished, ledger.Finished]:
        await ledger.begin(scripts, k, 0, 10)
        a = await ledger.finish(scripts, k, entry, outcome)
        b = await ledger.finish(scripts, k, entry, outcome)
        return a, b

    a, b = run(redis_server, twice)
    assert (a.sent, a.failed, a.acked, a.released) == (9, 1, True, True)
    assert (b.sent, b.failed, b.acked, b.released) == (0, 0, False, False)
    h = r.hgetall(k.hash)
    assert (h[b"sent"], h[b"failed"], h[b"code:551"]) == (b"9", b"1", b"1")
    assert r.xlen(k.errors) == 1
    assert r.xlen(k.work) == 1  # the entry deleted, the next chunk released once
    assert r.llen(k.backlog) == 0
    assert h[b"status"] == b"running"


def test_job_completes_when_counts_reach_total(redis_server: RedisServer, r: redis.Redis) -> None:
    k = new_job(redis_server, 10)
    entry = read_one(r, k)

    async def go(client: Redis, scripts: Scripts) -> ledger.Finished:
        await ledger.begin(scripts, k, 0, 10)
        return await ledger.finish(scripts, k, entry, Outcome(list(range(10)), [], [3]))

    done = run(redis_server, go)
    assert done.status == "completed"
    h = r.hgetall(k.hash)
    assert h[b"status"] == b"completed" and b"finished_at" in h
    assert h[b"indoubt"] == b"1"


def test_finish_for_a_vanished_job_only_settles_the_entry(
    redis_server: RedisServer, r: redis.Redis
) -> None:
    k = new_job(redis_server, 10)
    entry = read_one(r, k)
    r.delete(k.hash)

    async def go(client: Redis, scripts: Scripts) -> ledger.Finished:
        return await ledger.finish(scripts, k, entry, Outcome([0, 1], [], []))

    done = run(redis_server, go)
    assert done.status == "missing" and done.acked
    assert not r.exists(k.hash)  # not resurrected by a counter increment
    assert r.xlen(k.work) == 0
    assert r.xpending(k.work, keys.GROUP)["pending"] == 0


def test_gone_consumers_are_forgotten_only_when_they_hold_nothing(
    redis_server: RedisServer, r: redis.Redis
) -> None:
    from services.consumer import housekeeping

    k = new_job(redis_server, 30, window=3)
    read = r.xreadgroup(keys.GROUP, "gone-empty", {k.work: ">"})
    r.xack(k.work, keys.GROUP, *[entry_id for entry_id, _ in read[0][1]])
    r.xadd(k.work, {"c": b"x"})
    r.xreadgroup(keys.GROUP, "gone-holding", {k.work: ">"})  # holds one entry

    async def forget(client: Redis, scripts: Scripts) -> int:
        return await housekeeping.forget_gone_consumers(client, scripts, 1, "me", gone_after_ms=0)

    assert run(redis_server, forget) == 1
    names = {c["name"] for c in r.xinfo_consumers(k.work, keys.GROUP)}
    assert names == {b"gone-holding"}  # the one with a pending entry is kept
