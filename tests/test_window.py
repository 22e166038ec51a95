"""The release window follows the fleet's demand (services/consumer/demand.py): one job gets
more requests in flight than FANOUT_WINDOW x chunk size when senders are idle, while what the
window is for still holds: a small job behind a big one starts at once, a pause stops the fleet
within a second, a cancel counts everyone, and every recipient is sent once.

Each test runs with FANOUT_WINDOW=2 and chunks of 10, so the window alone allows 20 requests
in flight; consumers have far more senders than that."""

from __future__ import annotations

import time
from typing import Any

import redis
from conftest import PAGE, RedisServer, Stack, psids, wait_for
from redis.asyncio import Redis
from test_ledger import run

from services.producer import jobs
from shared import control, keys
from shared.models import JobRequest, Message
from shared.scripts import Scripts
from shared.settings import producer_settings

WINDOW, CHUNK = 2, 10


def new_job(redis_server: RedisServer, n: int) -> keys.JobKeys:
    """A job of n recipients in chunks of 10 on shard 0, a window of 1 released."""
    request = JobRequest(
        page_id="1", message=Message("hi"), recipients=psids(n), messaging_type="UPDATE"
    )
    env = {"FANOUT_API_TOKENS": "acme=t", "FANOUT_PAGE_TOKENS": "1=x", "FANOUT_SHARDS": "1"}
    settings = producer_settings({**env, "FANOUT_CHUNK_SIZE": "10", "FANOUT_WINDOW": "1"})
    prepared = jobs.prepare(request, request.message, b"{}", "acme", settings, 0, None)

    async def make(client: Redis, scripts: Scripts) -> None:
        await jobs.commit(client, scripts, prepared, 1, 3600)

    run(redis_server, make)
    return keys.JobKeys.of(prepared.job_id)


def start(stack: Stack, latency_ms: int, concurrency: int) -> None:
    stack.env["FANOUT_WINDOW"] = str(WINDOW)
    stack.env["FANOUT_CHUNK_SIZE"] = str(CHUNK)
    stack.start_fakegraph("--latency-ms", str(latency_ms))
    stack.start_producer()
    stack.start_consumer("c1", FANOUT_CONCURRENCY=str(concurrency))


def chunks_out(stack: Stack, job_id: str) -> int:
    """Chunks of the job released to the fleet and not yet finished, as Redis counts them."""
    released, acked = stack.r.hmget(keys.JobKeys.of(job_id).hash, "released", "acked")
    return int(released or 0) - int(acked or 0)


def stats(stack: Stack) -> dict[str, Any]:
    assert stack.fake is not None
    return stack.fake.stats()


def test_top_up_shares_the_ask_round_robin_and_releases_only_for_running_jobs(
    redis_server: RedisServer, r: redis.Redis
) -> None:
    big = new_job(redis_server, 100)  # 10 chunks of 10, a window of 1 released
    small = new_job(redis_server, 30)  # 3 chunks
    paused = new_job(redis_server, 50)  # 5 chunks

    async def ask(client: Redis, scripts: Scripts) -> list[list[int]]:
        assert await control.pause(scripts, paused) == "paused"
        flat = [key for k in (big, small, paused) for key in (k.hash, k.backlog)]
        first = await scripts.top_up(keys=[big.work, *flat], args=[5])
        second = await scripts.top_up(keys=[big.work, *flat], args=[10])
        return [list(map(int, first)), list(map(int, second))]

    first, second = run(redis_server, ask)
    # One chunk each in turn: big, small, big, small, big; the paused job gets none (-2).
    assert first == [3, 2, -2]
    # The small job's backlog is empty (-1); the big one gives what it has left.
    assert second == [6, -1, -2]
    counts = [r.hmget(k.hash, "released", "acked") for k in (big, small, paused)]
    assert [(int(a or 0), int(b or 0)) for a, b in counts] == [(10, 0), (3, 0), (1, 0)]
    assert r.xlen(big.work) == 10 + 3 + 1 and r.llen(paused.backlog) == 4


def test_one_job_gets_more_in_flight_than_the_window_when_senders_are_idle(
    stack: Stack,
) -> None:
    start(stack, latency_ms=1000, concurrency=200)
    job = stack.wait_done(stack.submit(psids(1000)), 60)
    assert (job["status"], job["sent"], job["failed"]) == ("completed", 1000, 0)
    seen = stats(stack)
    assert seen["unique"] == 1000 and seen["duplicates"] == 0 and seen["requests"] == 1000
    # The provider answers each request a full second after it arrived, so every request that
    # arrived within one wall-clock second was still unanswered at that second's end: the
    # busiest second counts requests in flight at the provider at once. The window alone
    # allows WINDOW x CHUNK = 20.
    busiest = seen["max_per_second"][PAGE]
    print(f"busiest second: {busiest} requests (the window allows {WINDOW * CHUNK})")
    assert busiest > WINDOW * CHUNK, seen["per_second"]


def test_a_small_job_behind_a_big_one_starts_at_once_while_the_big_one_has_grown(
    stack: Stack,
) -> None:
    start(stack, latency_ms=200, concurrency=100)
    api = stack.api
    assert api is not None
    big = stack.submit(psids(20_000))  # at most 100 in flight for 200 ms: 40 s of work
    wait_for(lambda: chunks_out(stack, big) > 3 * WINDOW, 30, "the big job's window to grow")
    small = stack.submit(psids(30, offset=1_000_000))
    job = stack.wait_done(small, 30)
    assert (job["status"], job["sent"]) == ("completed", 30)
    assert stack.job(big)["status"] == "running"  # the small one did not wait for it
    assert stack.job(big)["sent"] < 20_000
    delivered = stats(stack)
    assert delivered["duplicates"] == 0
    assert api.post(f"/v1/jobs/{big}/cancel").status_code == 200
    job = stack.wait_done(big, 30)
    # Every chunk released on demand is settled: everyone is sent or skipped, nobody twice.
    assert job["status"] == "cancelled" and job["sent"] + job["skipped"] == 20_000
    assert job["sent"] == stats(stack)["delivered"] - 30 and stats(stack)["duplicates"] == 0
    assert chunks_out(stack, big) == 0


def test_pause_stops_a_grown_job_within_a_second_and_resume_finishes_it_once(
    stack: Stack,
) -> None:
    start(stack, latency_ms=200, concurrency=300)
    api = stack.api
    assert api is not None
    job_id = stack.submit(psids(6000))
    wait_for(lambda: chunks_out(stack, job_id) > 5 * WINDOW, 30, "the job's window to grow")
    paused = api.post(f"/v1/jobs/{job_id}/pause")
    assert paused.status_code == 200 and paused.json()["status"] == "paused"
    time.sleep(1.0)  # the claim under test is "within one second"
    before = stats(stack)["requests"]
    time.sleep(1.0)  # and then nothing more for a while
    assert stats(stack)["requests"] == before
    job = stack.job(job_id)
    assert job["status"] == "paused" and job["sent"] == before < 6000
    # What was out went back to the backlog: a resume releases the window again.
    resumed = api.post(f"/v1/jobs/{job_id}/resume")
    assert resumed.json()["status"] in ("running", "pending")
    job = stack.wait_done(job_id, 60)
    assert (job["status"], job["sent"], job["indoubt"]) == ("completed", 6000, 0)
    seen = stats(stack)
    assert seen["unique"] == 6000 and seen["duplicates"] == 0
