"""End to end: producer -> Redis Streams -> consumer processes -> fakegraph, all real.

Each test checks the counters against what fakegraph really received and that no recipient
got a message twice, or, where a crash makes a duplicate possible, that every duplicate is
accounted for by the job's ``indoubt`` count.
"""

from __future__ import annotations

import signal
import time

from conftest import PAGE, Stack, psids, wait_for

from shared import keys


def pending_count(stack: Stack, shards: int = 2) -> int:
    total = 0
    for s in range(shards):
        info = stack.r.xpending(keys.work_stream(s), keys.GROUP)
        total += int(info["pending"])
    return total


def assert_exact(stack: Stack, job: dict[str, object], n: int) -> None:
    assert stack.fake is not None
    stats = stack.fake.stats()
    assert job["status"] == "completed", job
    assert job["sent"] == n and job["failed"] == 0 and job["skipped"] == 0, job
    assert stats["delivered"] == n, stats
    assert stats["unique"] == n and stats["duplicates"] == 0, stats


def test_5000_recipients_two_consumers_each_sent_once(stack: Stack) -> None:
    stack.start_fakegraph()
    stack.start_producer()
    stack.start_consumer("c1")
    stack.start_consumer("c2")
    recipients = psids(5000)
    job_id = stack.submit(recipients)
    job = stack.wait_done(job_id, 60)
    assert_exact(stack, job, 5000)
    assert job["indoubt"] == 0
    assert job["started_at"] and job["finished_at"]
    assert stack.fake is not None
    assert set(stack.fake.delivered()[PAGE]) == set(recipients)
    k = keys.JobKeys.of(job_id)
    # Acknowledged entries are deleted, and nothing is left pending.
    wait_for(lambda: pending_count(stack) == 0, 10, "no pending entries")
    assert stack.r.xlen(k.work) == 0
    assert stack.r.llen(k.backlog) == 0
    assert stack.r.bitcount(k.sent) == 5000


def test_transient_500s_are_retried_and_every_recipient_delivered_once(stack: Stack) -> None:
    stack.start_fakegraph("--fail-rate", "0.2", "--seed", "7")
    stack.start_producer()
    stack.start_consumer("c1", FANOUT_MAX_ATTEMPTS="20")
    job = stack.wait_done(stack.submit(psids(2000)), 60)
    assert_exact(stack, job, 2000)
    assert stack.fake is not None
    assert stack.fake.stats()["by_code"]["2"] > 200  # the faults really happened


def test_blocked_recipients_fail_with_551_and_the_rest_are_sent(stack: Stack) -> None:
    recipients = psids(1000)
    blocked = recipients[::100]
    stack.start_fakegraph("--blocked", ",".join(blocked))
    stack.start_producer()
    stack.start_consumer("c1")
    job = stack.wait_done(stack.submit(recipients), 60)
    assert job["status"] == "completed"
    assert job["sent"] == 990 and job["failed"] == 10
    assert job["error_codes"] == {"551": 10}
    assert stack.fake is not None
    assert stack.fake.stats()["unique"] == 990
    errors = stack.r.xrange(keys.JobKeys.of(job["job_id"]).errors)
    assert sorted(e[b"recipient"].decode() for _, e in errors) == sorted(blocked)
    assert {e[b"code"] for _, e in errors} == {b"551"}
    assert {e[b"subcode"] for _, e in errors} == {b"1545041"}


def test_kill_9_one_of_two_consumers_mid_job_loses_nothing(stack: Stack) -> None:
    stack.start_fakegraph("--latency-ms", "20")
    stack.start_producer()
    victim = stack.start_consumer("victim", FANOUT_CONCURRENCY="64")
    stack.start_consumer("survivor", FANOUT_CONCURRENCY="64")
    n = 6000
    job_id = stack.submit(psids(n))
    wait_for(lambda: stack.job(job_id)["sent"] >= 1500, 60, "delivery under way")
    victim.signal(signal.SIGKILL)
    victim.wait(10)
    job = stack.wait_done(job_id, 90)
    assert stack.fake is not None
    stats = stack.fake.stats()
    assert job["status"] == "completed"
    assert job["sent"] == n and job["failed"] == 0
    assert stats["unique"] == n  # nobody lost
    # Duplicates: at most the victim's requests in flight when it died (64), each counted in
    # doubt; indoubt also counts what it had begun but not posted: the rest of the chunk it
    # was sending and of the next one, begun once senders came free (room_for rounds up).
    print(f"kill -9: indoubt={job['indoubt']} duplicates={stats['duplicates']}")
    assert stats["duplicates"] <= 64, (stats, job)
    assert stats["duplicates"] <= job["indoubt"] <= 2 * 100, (stats, job)
    wait_for(lambda: pending_count(stack) == 0, 10, "no pending entries")


def test_a_chunk_delivered_twice_is_not_sent_or_counted_twice(stack: Stack) -> None:
    stack.start_fakegraph()
    stack.start_producer()
    # Keep the first chunk's payload before any consumer runs.
    job_id = stack.submit(psids(500))
    k = keys.JobKeys.of(job_id)
    _, first = stack.r.xrange(k.work, count=1)[0]
    stack.start_consumer("c1")
    job = stack.wait_done(job_id, 60)
    assert_exact(stack, job, 500)
    stack.r.xadd(k.work, first)  # the same chunk, delivered again
    wait_for(
        lambda: stack.r.xlen(k.work) == 0 and pending_count(stack) == 0, 10, "re-added chunk done"
    )
    again = stack.job(job_id)
    assert (again["sent"], again["failed"], again["indoubt"]) == (500, 0, 0)
    assert stack.fake is not None
    assert stack.fake.stats()["delivered"] == 500


def test_sigterm_drains_in_flight_work_and_exits_0(stack: Stack) -> None:
    stack.start_fakegraph("--latency-ms", "200")
    stack.start_producer()
    consumer = stack.start_consumer("draining", FANOUT_CONCURRENCY="100")
    job_id = stack.submit(psids(3000))
    wait_for(lambda: stack.job(job_id)["sent"] > 0, 30, "delivery under way")
    consumer.signal(signal.SIGTERM)
    assert consumer.wait(30) == 0
    log = consumer.output()
    assert "draining" in log and "consumer stopped" in log
    # Everything it held was finished and acknowledged; nothing stays pending for it.
    for s in range(2):
        assert (
            stack.r.xpending_range(keys.work_stream(s), keys.GROUP, "-", "+", 100, "draining") == []
        )
    job = stack.job(job_id)
    assert stack.fake is not None
    assert job["sent"] == stack.fake.stats()["delivered"]
    assert job["indoubt"] == 0
    # A new consumer finishes the job with no duplicates.
    stack.start_consumer("after")
    job = stack.wait_done(job_id, 60)
    assert_exact(stack, job, 3000)


def test_what_a_draining_consumer_hands_back_is_taken_by_the_fleet_within_a_second(
    stack: Stack,
) -> None:
    # A page paced at 40/s: chunks wait for permits far longer than the drain deadline, and
    # leases (30 s) are far longer than the test, so only the hand-back can move the chunks.
    stack.start_fakegraph("--latency-ms", "50")
    stack.start_producer()
    paced = {"FANOUT_RATE_LIMIT": "40", "FANOUT_CLAIM_IDLE_MS": "30000"}
    leaving = stack.start_consumer("leaving", FANOUT_DRAIN_S="0.3", **paced)
    job_id = stack.submit(psids(400))
    wait_for(lambda: stack.job(job_id)["sent"] > 0, 30, "delivery under way")
    streams = [keys.work_stream(s) for s in range(2)]

    def held_by(name: str) -> int:
        return sum(len(stack.r.xpending_range(s, keys.GROUP, "-", "+", 100, name)) for s in streams)

    assert held_by("leaving") > 0
    staying = stack.start_consumer("staying", **paced)
    wait_for(lambda: "consumer started" in staying.output(), 15, "the second consumer")
    leaving.signal(signal.SIGTERM)
    assert leaving.wait(30) == 0
    exited = time.monotonic()
    assert held_by("leaving") == 0  # nothing left under the stopped consumer's name

    def all_taken() -> bool:
        lag = sum(int(g["lag"] or 0) for s in streams for g in stack.r.xinfo_groups(s))
        return lag == 0 and held_by("staying") > 0

    wait_for(all_taken, 5, "the staying consumer to take the handed-back chunks")
    took = time.monotonic() - exited
    print(f"handed-back chunks taken {took:.2f} s after the exit")
    assert took < 1.0, took
    job = stack.wait_done(job_id, 60)
    assert stack.fake is not None
    stats = stack.fake.stats()
    assert job["status"] == "completed" and job["sent"] == 400 == stats["unique"]
    assert stats["duplicates"] <= job["indoubt"], (stats, job)


def test_a_chunk_past_max_deliveries_goes_to_the_dead_stream(stack: Stack) -> None:
    stack.start_fakegraph()
    stack.start_producer()
    job_id = stack.submit(psids(150))  # chunks of 100: one of 100, one of 50
    k = keys.JobKeys.of(job_id)
    first_id = stack.r.xrange(k.work, count=1)[0][0]
    # A consumer that keeps dying with the chunk: read it, then claim it 4 more times.
    stack.r.xgroup_create(k.work, keys.GROUP, id="0", mkstream=True)
    stack.r.xreadgroup(keys.GROUP, "ghost", {k.work: ">"}, count=1)
    for _ in range(4):
        stack.r.xclaim(k.work, keys.GROUP, "ghost", 0, [first_id])
    stack.start_consumer("c1", FANOUT_MAX_DELIVERIES="5", FANOUT_CLAIM_IDLE_MS="300")
    job = stack.wait_done(job_id, 60)
    assert job["status"] == "completed"
    assert job["sent"] == 50 and job["failed"] == 100
    assert job["error_codes"] == {"dead_letter": 100}
    dead = stack.r.xrange(k.dead)
    assert len(dead) == 1
    assert b"delivered 6 times" in dead[0][1][b"reason"]
    assert stack.fake is not None
    assert stack.fake.stats()["delivered"] == 50


def test_consumer_probes_and_metrics(stack: Stack) -> None:
    import httpx
    from conftest import free_port

    stack.start_fakegraph("--blocked", "10000000003")
    stack.start_producer()
    port = free_port()
    stack.start_consumer("probed", FANOUT_METRICS_PORT=str(port))
    probe = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5)
    wait_for(lambda: probe.get("/readyz").status_code == 200, 20, "consumer ready")
    assert probe.get("/healthz").json() == {"status": "ok"}
    assert probe.get("/nope").status_code == 404
    stack.wait_done(stack.submit(psids(10)), 30)
    metrics = probe.get("/metrics").text
    assert 'fanout_messages_total{code="",outcome="sent"} 9.0' in metrics
    assert 'fanout_messages_total{code="551",outcome="failed"} 1.0' in metrics
    assert "fanout_send_duration_seconds_count 10.0" in metrics
    assert "EAA" not in metrics  # no token in any label
    probe.close()
