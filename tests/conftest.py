"""Real parts only: every test gets its own redis-server on a free port, fakegraph and the
services run as real processes, and waiting is a poll with a deadline, never a bare sleep."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import redis

ROOT = Path(__file__).resolve().parent.parent
PAGE = "1001"
PAGE_TOKEN = "EAAtestpagetoken0123456789secret"
OTHER_PAGE = "3003"  # tenant `other`'s own page; PAGE is acme's
OTHER_PAGE_TOKEN = "EAAotherpagetoken0123456789secret"
API_TOKENS = {"acme": "tok-acme-0123456789", "other": "tok-other-0123456789"}
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def most_in_any_second(times: list[float]) -> int:
    """The most arrivals in any window [t, t + 1 s) starting at an arrival."""
    times = sorted(times)
    most, first = 0, 0
    for last, t in enumerate(times):
        while t - times[first] >= 1.0:
            first += 1
        most = max(most, last - first + 1)
    return most


def wait_for(check: Callable[[], T], timeout: float = 30.0, what: str = "condition") -> T:
    """Poll ``check`` until it returns something truthy; fail with ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except (OSError, httpx.HTTPError, redis.RedisError) as exc:
            last = exc
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


class RedisServer:
    def __init__(self, workdir: Path, extra: list[str] | None = None) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.url = f"redis://127.0.0.1:{self.port}/0"
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed (the README's test command installs it)")
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--appendonly", "no", "--dir", str(workdir), "--protected-mode", "no"]
        self.proc = subprocess.Popen([*args, *(extra or [])], stdout=subprocess.DEVNULL)
        self.client = redis.Redis.from_url(self.url)
        wait_for(self.client.ping, 10, "redis-server to answer")

    def stop(self) -> None:
        self.client.close()
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    yield server
    server.stop()


@pytest.fixture
def r(redis_server: RedisServer) -> redis.Redis:
    return redis_server.client


class Proc:
    """A service started as its own process, with its output kept for the failure report."""

    def __init__(self, args: list[str], env: dict[str, str], name: str, logdir: Path) -> None:
        self.name = name
        self.path = logdir / f"{name}.log"
        self.log = open(self.path, "wb")  # noqa: SIM115 - closed in stop(), lives with the process
        self.proc = subprocess.Popen(
            [sys.executable, "-m", *args],
            env=env,
            cwd=ROOT,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def output(self) -> str:
        return self.path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def stop(self, grace_s: float = 15) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


class FakeGraph:
    def __init__(self, procs: list[Proc], env: dict[str, str], logdir: Path, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = Proc(
            ["services.fakegraph", "--port", str(self.port), *args], env, "fakegraph", logdir
        )
        procs.append(self.proc)
        self.http = httpx.Client(base_url=self.url, timeout=10)
        wait_for(lambda: self.http.get("/_fake/stats").status_code == 200, 15, "fakegraph")

    def stats(self) -> dict[str, Any]:
        data: dict[str, Any] = self.http.get("/_fake/stats").json()
        return data

    def delivered(self) -> dict[str, dict[str, int]]:
        data: dict[str, dict[str, int]] = self.http.get("/_fake/delivered").json()
        return data

    def configure(self, **config: Any) -> None:
        self.http.post("/_fake/config", json=config).raise_for_status()


class Stack:
    """Redis + fakegraph + producer + consumers, each a real process, for end-to-end tests."""

    def __init__(self, redis_server: RedisServer) -> None:
        self.redis_server = redis_server
        self.r = redis_server.client
        self.logdir = redis_server.workdir
        self.procs: list[Proc] = []
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("FANOUT_")},
            "FANOUT_REDIS_URL": redis_server.url,
            "FANOUT_API_TOKENS": ",".join(f"{t}={tok}" for t, tok in API_TOKENS.items()),
            "FANOUT_PAGE_TOKENS": f"{PAGE}={PAGE_TOKEN},{OTHER_PAGE}={OTHER_PAGE_TOKEN}",
            "FANOUT_SHARDS": "2",
            "FANOUT_METRICS_PORT": "0",
            "FANOUT_CLAIM_IDLE_MS": "1500",
            "FANOUT_RATE_LIMIT": "0",  # unlimited unless a test is about rate limits
            "FANOUT_LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
        }
        self.fake: FakeGraph | None = None
        self.api: httpx.Client | None = None
        self.consumers: list[Proc] = []

    def start_fakegraph(self, *args: str) -> FakeGraph:
        tokens = f"{PAGE}={PAGE_TOKEN},{OTHER_PAGE}={OTHER_PAGE_TOKEN}"
        self.fake = FakeGraph(self.procs, self.env, self.logdir, "--tokens", tokens, *args)
        self.env["FANOUT_GRAPH_URL"] = self.fake.url
        return self.fake

    def start_producer(self) -> httpx.Client:
        # Unless a test binds pages itself: `other` owns OTHER_PAGE, acme every other page.
        pages = [p.partition("=")[0] for p in self.env["FANOUT_PAGE_TOKENS"].split(",")]
        acme = "|".join(p for p in pages if p != OTHER_PAGE)
        self.env.setdefault("FANOUT_TENANT_PAGES", f"acme={acme},other={OTHER_PAGE}")
        port = free_port()
        self.procs.append(
            Proc(
                ["services.cli", "producer", "--port", str(port)], self.env, "producer", self.logdir
            )
        )
        self.api = httpx.Client(
            base_url=f"http://127.0.0.1:{port}",
            headers={"Authorization": f"Bearer {API_TOKENS['acme']}"},
            timeout=30,
        )
        wait_for(lambda: self.api.get("/healthz").status_code == 200, 15, "producer")  # type: ignore[union-attr]
        return self.api

    def start_consumer(self, name: str, **env: str) -> Proc:
        proc = Proc(
            ["services.cli", "consumer", "--name", name],
            {**self.env, **env},
            f"consumer-{name}",
            self.logdir,
        )
        self.procs.append(proc)
        self.consumers.append(proc)
        return proc

    def submit(self, recipients: list[str], **extra: Any) -> str:
        assert self.api is not None
        body = {
            "page_id": PAGE,
            "message": {"text": "Hello from fanout"},
            "recipients": recipients,
            "messaging_type": "UPDATE",
            **extra,
        }
        response = self.api.post("/v1/jobs", json=body)
        assert response.status_code == 202, response.text
        job_id: str = response.json()["job_id"]
        return job_id

    def job(self, job_id: str) -> dict[str, Any]:
        assert self.api is not None
        data: dict[str, Any] = self.api.get(f"/v1/jobs/{job_id}").json()
        return data

    def wait_done(self, job_id: str, timeout: float = 60) -> dict[str, Any]:
        """Until the job has ended and its counts are final (a stopped job's settle when its
        last chunk in flight is in: finished_at says so)."""

        def ended() -> dict[str, Any] | None:
            job = self.job(job_id)
            final = job.get("status") in ("completed", "failed", "cancelled") and job["finished_at"]
            return job if final else None

        return wait_for(ended, timeout, f"job {job_id} to finish")

    def logs(self) -> str:
        return "\n".join(f"===== {p.name}\n{p.output()[-4000:]}" for p in self.procs)

    def stop(self) -> None:
        # The test is over: consumers get 5 s together to drain (one holding a restricted
        # page's chunks would wait out FANOUT_DRAIN_S), then they are killed. Tests about
        # draining stop their consumers themselves and assert on it.
        deadline = time.monotonic() + 5
        for consumer in self.consumers:
            consumer.signal(signal.SIGTERM)
        for proc in reversed(self.procs):
            consumer_left = max(0.0, deadline - time.monotonic())
            proc.stop(consumer_left if proc in self.consumers else 15)
        if self.fake is not None:
            self.fake.http.close()
        if self.api is not None:
            self.api.close()


@pytest.fixture
def stack(redis_server: RedisServer, request: pytest.FixtureRequest) -> Iterator[Stack]:
    s = Stack(redis_server)
    yield s
    s.stop()
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        print(s.logs())


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    rep = yield
    if rep.when == "call":
        item.rep_call = rep  # type: ignore[attr-defined]
    return rep


def psids(n: int, offset: int = 0) -> list[str]:
    return [str(10_000_000_000 + offset + i) for i in range(n)]
