"""Behaving as one well-mannered Messenger client across the fleet: fleet-wide rate limits,
cool-downs on throttles, fatal errors that stop a job fast, fairness between jobs, and the
errors a user can page through."""

from __future__ import annotations

import time

import pytest
from conftest import PAGE, PAGE_TOKEN, Stack, psids, wait_for

PAGE_B = "2002"


def test_revoked_token_fails_the_job_after_a_bounded_number_of_calls(stack: Stack) -> None:
    stack.start_fakegraph("--revoked")
    stack.start_producer()
    stack.start_consumer("c1", FANOUT_CONCURRENCY="32")
    stack.start_consumer("c2", FANOUT_CONCURRENCY="32")
    n = 20_000
    job = stack.wait_done(stack.submit(psids(n)), 60)
    assert stack.fake is not None
    calls = stack.fake.stats()["requests"]
    assert job["status"] == "failed"
    assert job["reason"].startswith("provider error 190/463: ")
    # A handful of calls per consumer (those in flight when the first 190 came), not 20,000.
    assert 1 <= calls <= 2 * 32 + 2 * 100, calls
    assert job["failed"] == calls  # each refused recipient failed with the provider's code
    assert job["error_codes"] == {"190": calls}
    assert job["sent"] == 0
    wait_for(lambda: stack.job(job["job_id"])["finished_at"], 20, "stopped job to settle")
    job = stack.job(job["job_id"])
    assert job["sent"] + job["failed"] + job["skipped"] == n, job


def test_three_consumers_share_a_fleet_wide_limit(stack: Stack) -> None:
    stack.start_fakegraph()
    stack.start_producer()
    for name in ("c1", "c2", "c3"):
        stack.start_consumer(name, FANOUT_RATE_LIMIT="200")
    job = stack.wait_done(stack.submit(psids(1200)), 60)
    assert job["status"] == "completed" and job["sent"] == 1200
    assert stack.fake is not None
    stats = stack.fake.stats()
    assert stats["duplicates"] == 0
    # Lenient on purpose (a test, not a benchmark): never much over the limit in any second.
    # The GCRA allows rate * 1 s + a 50 ms burst in any second.
    assert stats["max_per_second"][PAGE] <= 200 + 10 + 10, stats["max_per_second"]


def test_throttled_page_cools_down_and_still_delivers_everyone_once(stack: Stack) -> None:
    # The provider allows 100/s; the fleet thinks it may send unlimited: the 613s must slow it.
    stack.start_fakegraph("--rate-limit", "100")
    stack.start_producer()
    stack.start_consumer("c1", FANOUT_CONCURRENCY="64")
    job = stack.wait_done(stack.submit(psids(300)), 90)
    assert stack.fake is not None
    stats = stack.fake.stats()
    assert job["status"] == "completed" and job["sent"] == 300, job
    assert stats["unique"] == 300 and stats["duplicates"] == 0
    throttled = stats["by_code"].get("613", 0)
    assert throttled > 0  # it did hit the limit
    # The cool-down holds the fleet back: at most one refusal per recipient. (An unlimited fleet
    # sends all 300 within milliseconds: 100 fit the provider's second and 200 are refused before
    # the first 613 is back; after the pause 100 of those fit and 100 are refused again: 300 in
    # the worst case. Retrying on backoff alone, without the fleet-wide pause, refuses far more.)
    assert throttled <= 300, stats["by_code"]


def small_job_behind_a_throttled_one(stack: Stack, concurrency: int, chunk_size: int) -> float:
    """Seconds for a 200-recipient job of page B, submitted behind a 20,000-recipient job of
    page A throttled to 100/s, with two consumers. Also used by scripts/soak-fairness."""
    stack.env["FANOUT_PAGE_TOKENS"] += f",{PAGE_B}=EAApageBtoken0123456789"
    stack.env["FANOUT_CHUNK_SIZE"] = str(chunk_size)
    stack.start_fakegraph("--tokens", f"{PAGE_B}=EAApageBtoken0123456789,{PAGE}={PAGE_TOKEN}")
    stack.start_producer()
    for name in ("c1", "c2"):
        stack.start_consumer(
            name,
            FANOUT_PAGE_RATE_LIMITS=f"{PAGE}=100",
            FANOUT_RATE_LIMIT="0",
            FANOUT_CONCURRENCY=str(concurrency),
            FANOUT_DRAIN_S="1",
        )
    big = stack.submit(psids(20_000))
    wait_for(lambda: stack.job(big)["sent"] >= 100, 30, "the big job under way")
    started = time.monotonic()
    small = stack.submit(psids(200, offset=500_000), page_id=PAGE_B)
    job = stack.wait_done(small, 30)
    took = time.monotonic() - started
    assert job["status"] == "completed" and job["sent"] == 200
    assert stack.job(big)["status"] == "running"  # A (200 s of work) is far from done
    assert stack.fake is not None
    delivered = stack.fake.delivered()
    assert len(delivered.get(PAGE_B, {})) == 200  # every one of B's, each once
    assert all(n == 1 for n in delivered[PAGE_B].values())
    return took


@pytest.mark.parametrize(
    ("concurrency", "chunk_size"),
    [(256, 100), (32, 100), (5, 20)],
    ids=["senders>chunk", "senders<chunk", "few-senders-small-chunks"],
)
def test_small_job_for_another_page_is_not_stuck_behind_a_throttled_one(
    stack: Stack, concurrency: int, chunk_size: int
) -> None:
    took = small_job_behind_a_throttled_one(stack, concurrency, chunk_size)
    print(f"small job done in {took:.2f} s (concurrency {concurrency}, chunk {chunk_size})")
    assert took < 5, took  # seconds, not "after A" (A needs 200 s)


def test_errors_endpoint_pages_through_failures(stack: Stack) -> None:
    recipients = psids(300)
    blocked = recipients[::10]
    stack.start_fakegraph("--blocked", ",".join(blocked))
    api = stack.start_producer()
    stack.start_consumer("c1")
    job = stack.wait_done(stack.submit(recipients), 60)
    assert job["failed"] == 30 and job["error_codes"] == {"551": 30}
    seen: list[dict[str, object]] = []
    after: str | None = None
    while True:
        params: dict[str, str | int] = {"limit": 7}
        if after:
            params["after"] = after
        page = api.get(f"/v1/jobs/{job['job_id']}/errors", params=params).json()
        seen += page["items"]
        after = page["next"]
        if after is None:
            break
    assert sorted(str(i["recipient"]) for i in seen) == sorted(blocked)
    assert {(i["code"], i["subcode"], i["attempts"]) for i in seen} == {("551", "1545041", 1)}
    assert all("available" in str(i["message"]) for i in seen)
    for bad in ({"limit": 0}, {"limit": 1001}, {"limit": "x"}, {"after": "../"}):
        response = api.get(f"/v1/jobs/{job['job_id']}/errors", params=bad)
        assert response.status_code == 422, bad
    assert api.get("/v1/jobs/0-000000000000000000000000/errors").status_code == 404
