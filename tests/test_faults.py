"""Faults from outside (issue 13 items 2 and 4): consumers killed with kill -9 while requests
are in flight, a provider whose answers go bad after it delivered, and Redis killed and
restarted mid-job. Each asserts on what fakegraph received per recipient and on the job's
counters; every time is printed. ``scripts/soak-faults`` repeats them.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from conftest import PAGE, PAGE_TOKEN, RedisServer, Stack, psids, wait_for

from shared import keys
from shared.scripts import _source

AOF = ["--appendonly", "yes", "--appendfsync", "always"]
# How long Redis stays down; scripts/soak-faults also runs it longer than a lease.
REDIS_DOWN_S = float(os.environ.get("SOAK_REDIS_DOWN_S", "1.0"))


def duplicates(stack: Stack) -> tuple[int, int, int]:
    """(extra deliveries, recipients delivered more than once, recipients delivered)."""
    assert stack.fake is not None
    counts = stack.fake.delivered().get(PAGE, {})
    extra = sum(n - 1 for n in counts.values())
    return extra, sum(1 for n in counts.values() if n > 1), len(counts)


def test_kill_9_duplicates_at_most_the_requests_in_flight(stack: Stack) -> None:
    concurrency, kills, n = 32, 4, 12_000
    stack.start_fakegraph("--latency-ms", "50")  # ~32 requests in flight per consumer
    stack.start_producer()
    env = {"FANOUT_CONCURRENCY": str(concurrency)}
    live = [stack.start_consumer(f"c{i}", **env) for i in range(3)]
    job_id = stack.submit(psids(n))
    for kill in range(kills):
        sent = stack.job(job_id)["sent"]
        wait_for(lambda s=sent: stack.job(job_id)["sent"] >= s + 600, 30, "delivery under way")
        victim = live.pop(0)
        victim.signal(signal.SIGKILL)
        victim.wait(10)
        live.append(stack.start_consumer(f"r{kill}", **env))
    job = stack.wait_done(job_id, 90)
    extra, twice, unique = duplicates(stack)
    print(
        f"kill -9 x{kills} at concurrency {concurrency}: duplicates={extra} "
        f"({extra / kills:.1f} per kill, recipients twice={twice}) indoubt={job['indoubt']}"
    )
    assert job["status"] == "completed" and job["sent"] == n and job["failed"] == 0, job
    assert unique == n  # nobody lost
    assert extra <= concurrency * kills  # at most the requests in flight, never a chunk
    assert extra <= job["indoubt"], job  # and every one of them counted


def test_bad_answers_after_delivery_never_exceed_indoubt(stack: Stack) -> None:
    n = 3000
    fake = stack.start_fakegraph("--latency-ms", "5")
    fake.configure(
        html_502_rate=0.03, garbled_200_rate=0.03, cut_rate=0.03, hang_rate=0.02, seed=13
    )
    stack.start_producer()
    env = {"FANOUT_CONCURRENCY": "32", "FANOUT_REQUEST_TIMEOUT_S": "0.5"}
    victim = stack.start_consumer("victim", **env)
    stack.start_consumer("survivor", **env)
    job_id = stack.submit(psids(n))
    wait_for(lambda: stack.job(job_id)["sent"] >= 600, 30, "delivery under way")
    victim.signal(signal.SIGKILL)  # its lost answers and attempted recipients go to another
    victim.wait(10)
    job = stack.wait_done(job_id, 90)
    extra, twice, unique = duplicates(stack)
    by_code = fake.stats()["by_code"]
    print(
        f"bad answers (3% HTML 502, 3% non-JSON 200, 3% cut, 2% never) + 1 kill: "
        f"duplicates={extra} (recipients twice or more={twice}) indoubt={job['indoubt']} "
        f"sent={job['sent']} failed={job['failed']} codes={job['error_codes']} {by_code}"
    )
    assert job["status"] == "completed", job
    assert job["sent"] + job["failed"] + job["skipped"] == n, job
    assert unique == n  # every request was delivered, whatever came back
    assert extra > 50  # the faults really made resends
    assert extra <= job["indoubt"], job


@pytest.fixture
def aof_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path, AOF)
    yield server
    server.stop()


def restart(server: RedisServer, down_s: float) -> float:
    """kill -9 the server, leave it down ``down_s``, start it again on the same port and
    directory (it replays its AOF); the monotonic time it answered again."""
    server.proc.kill()
    server.proc.wait()
    time.sleep(down_s)  # the outage under test lasts this long
    binary = shutil.which("redis-server")
    assert binary is not None
    args = [binary, "--port", str(server.port), "--bind", "127.0.0.1", "--save", ""]
    args += ["--dir", str(server.workdir), "--protected-mode", "no", *AOF]
    server.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL)
    probe = redis.Redis(port=server.port)
    try:
        wait_for(probe.ping, 20, "redis-server to come back")
    finally:
        probe.close()
    return time.monotonic()


def test_redis_restart_mid_job_resumes_at_once_and_resends_nothing(
    aof_redis: RedisServer, request: pytest.FixtureRequest
) -> None:
    stack = Stack(aof_redis)
    try:
        _redis_restart(stack)
    except BaseException:
        print(stack.logs())
        raise
    finally:
        stack.stop()


def _redis_restart(stack: Stack) -> None:
    n, concurrency = 10_000, 32
    fake = stack.start_fakegraph("--latency-ms", "20")
    stack.start_producer()
    for name in ("c1", "c2"):
        stack.start_consumer(name, FANOUT_CONCURRENCY=str(concurrency))
    job_id = stack.submit(psids(n))
    wait_for(lambda: stack.job(job_id)["sent"] >= 2000, 30, "delivery under way")
    back = restart(stack.redis_server, REDIS_DOWN_S)
    requests_back = fake.stats()["requests"]
    # Resumed: more new requests than both consumers' senders could have had waiting.
    wait_for(
        lambda: fake.stats()["requests"] > requests_back + 2 * concurrency, 10, "sending again"
    )
    resumed_s = time.monotonic() - back
    job: dict[str, Any] = stack.wait_done(job_id, 60)
    extra, twice, unique = duplicates(stack)
    print(
        f"Redis kill -9 + restart (AOF always, down {REDIS_DOWN_S} s): sending again "
        f"{resumed_s:.2f} s after "
        f"it answered; job done {time.monotonic() - back:.1f} s after; duplicates={extra} "
        f"indoubt={job['indoubt']}"
    )
    assert job["status"] == "completed" and job["sent"] == n and job["failed"] == 0, job
    assert unique == n
    assert resumed_s < 5.0
    # No recipient is sent twice: answers received while Redis was away were kept and written.
    assert extra == 0 and twice == 0, (extra, twice)


class RoundTrips:
    """Commands clients send to Redis, counted with MONITOR (INFO commandstats would count
    the commands a script runs too), each script call one round trip."""

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url)
        self.count = 0
        self.by_command: dict[str, int] = {}
        self.stopped = threading.Event()
        self.monitor = self.client.monitor()
        self.monitor.__enter__()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for command in self.monitor.listen():
                if self.stopped.is_set():
                    return
                if command.get("client_type") != "lua":
                    self.count += 1
                    words = str(command.get("command", "")).split()
                    name = " ".join(words[:2]) if words[:1] == ["EVALSHA"] else words[0]
                    self.by_command[name] = self.by_command.get(name, 0) + 1
        except (redis.RedisError, OSError, ValueError):
            return

    def stop(self) -> int:
        self.stopped.set()
        self.client.ping()  # wakes the listener, which then stops
        self.thread.join(10)
        self.client.close()
        return self.count


def script_sha(name: str) -> str:
    return hashlib.sha1(_source(name).encode()).hexdigest()


def test_round_trips_per_message_on_an_unlimited_page(stack: Stack) -> None:
    """What recording answers as they arrive costs in Redis round trips, everything included
    (reads, permits, begin, record flushes, finish, leases, upkeep), on an unlimited page."""
    n = 20_000
    stack.start_fakegraph()
    stack.start_producer()
    job_id = stack.submit(psids(n))
    stack.procs[-1].stop()  # the producer: only the consumer's calls are counted from here
    trips = RoundTrips(stack.redis_server.url)
    started = time.monotonic()
    stack.start_consumer("c1")
    k = keys.JobKeys.of(job_id)
    polls = 0

    def finished() -> bool:
        nonlocal polls
        polls += 1
        return stack.r.hget(k.hash, "finished_at") is not None

    wait_for(finished, 60, "job done")
    seconds = time.monotonic() - started
    calls = trips.stop() - polls - 1  # less this test's polls and the final PING
    flushes = trips.by_command.get(f"EVALSHA {script_sha('record_answers')}", 0)
    extra, _, unique = duplicates(stack)
    print(
        f"round trips: {calls} Redis commands from clients for {n} messages = "
        f"{calls / n:.4f} per message (a pipeline's commands each count), of which "
        f"{flushes / n:.4f} are answers written as they arrive ({n / seconds:.0f} msg/s with "
        "MONITOR on)"
    )
    print("round trips by command:", sorted(trips.by_command.items(), key=lambda kv: -kv[1])[:8])
    assert unique == n and extra == 0
    assert 0 < flushes / n <= 0.02  # about one flush per chunk of 100, never per answer


def test_fakegraph_bad_answers_come_after_delivery(stack: Stack) -> None:
    fake = stack.start_fakegraph()
    send = {"recipient": {"id": "42"}, "message": {"text": "hi"}, "messaging_type": "UPDATE"}
    url = f"{fake.url}/v21.0/me/messages"
    auth = {"Authorization": f"Bearer {PAGE_TOKEN}"}
    fake.configure(html_502_rate=1.0)
    answer = httpx.post(url, json=send, headers=auth)
    assert answer.status_code == 502 and answer.headers["content-type"] == "text/html"
    assert b"502 Bad Gateway" in answer.content
    fake.configure(html_502_rate=0.0, garbled_200_rate=1.0)
    answer = httpx.post(url, json=send, headers=auth)
    assert answer.status_code == 200 and answer.content.startswith(b"<html>")
    fake.configure(garbled_200_rate=0.0, cut_rate=1.0)
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.post(url, json=send, headers=auth)
    fake.configure(cut_rate=0.0, hang_rate=1.0)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(url, json=send, headers=auth, timeout=0.5)
    assert fake.delivered()[PAGE] == {"42": 4}  # every one delivered before it went bad
    refused = fake.http.post("/_fake/config", json={"cut_rate": 0.7, "hang_rate": 0.7})
    assert refused.status_code == 400 and fake.stats()["delivered"] == 4


def test_redis_stalled_longer_than_the_lease_resends_nothing(stack: Stack) -> None:
    """SIGSTOP Redis for longer than the lease (1.5 s here): every held chunk's lease lapses,
    and a consumer with room must not take over a live one's chunk when Redis is back."""
    n, stall_s = 10_000, 4.0
    fake = stack.start_fakegraph("--latency-ms", "20")
    stack.start_producer()
    for name in ("c1", "c2", "c3", "c4"):
        stack.start_consumer(name, FANOUT_CONCURRENCY="32")
    job_id = stack.submit(psids(n))
    wait_for(lambda: stack.job(job_id)["sent"] >= 2000, 30, "delivery under way")
    stack.redis_server.proc.send_signal(signal.SIGSTOP)
    time.sleep(stall_s)  # the stall under test lasts this long
    stack.redis_server.proc.send_signal(signal.SIGCONT)
    back = time.monotonic()
    requests_back = fake.stats()["requests"]
    wait_for(lambda: fake.stats()["requests"] > requests_back + 4 * 32, 10, "sending again")
    resumed_s = time.monotonic() - back
    job = stack.wait_done(job_id, 60)
    extra, twice, unique = duplicates(stack)
    print(
        f"Redis SIGSTOP {stall_s} s (lease 1.5 s), 4 consumers: sending again {resumed_s:.2f} s "
        f"after; duplicates={extra} indoubt={job['indoubt']}"
    )
    assert job["status"] == "completed" and job["sent"] == n and unique == n, job
    assert resumed_s < 5.0
    assert extra == 0 and twice == 0, (extra, twice)
