"""Completion callbacks: which targets are refused, the signature, and the sender end to end on a
real redis-server against a local receiver (both on an event loop in a thread, so the test
polls Redis and the receiver from outside with a deadline)."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import threading
from typing import Any, cast

import msgspec
import pytest
import redis
from conftest import PAGE, PAGE_TOKEN, RedisServer, free_port, wait_for

from services.consumer.callbacks import CallbackSender
from shared import jobview, keys
from shared.callbacks import check_target, sign, verify
from shared.redisconn import connect
from shared.settings import ConsumerSettings, consumer_settings

SECRET = "whsec-0123456789abcdef"

# --- check_target -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://93.184.216.34/hook",
        "http://93.184.216.34:8080/hook?x=1",
        "http://[2606:4700:4700::1111]/hook",
    ],
)
def test_public_targets_pass(url: str) -> None:
    check_target(url, ())


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://127.0.0.1/x", "loopback"),
        ("http://localhost/x", "loopback"),
        ("http://2130706433/x", "loopback"),  # 127.0.0.1 in a legacy spelling
        ("http://10.1.2.3", "private"),
        ("http://172.16.5.4/", "private"),
        ("http://192.168.0.1", "private"),
        ("http://169.254.169.254/latest", "link-local"),
        ("http://[::1]/", "loopback"),
        ("http://[::ffff:127.0.0.1]/", "loopback"),
        ("http://[fd12::1]/", "unique-local"),
        ("http://[fe80::1]/", "link-local"),
        ("http://100.64.0.1", "CGNAT"),
        ("http://224.0.0.1/", "multicast"),
        ("http://0.0.0.0/", "unspecified"),
        ("http://240.0.0.1/", "reserved"),
        ("ftp://example.com", "http or https"),
        ("http:///x", "no host"),
        ("not a url", "http or https"),
        ("http://user:pw@1.2.3.4/", "user name or password"),
        ("http://fanout-test-host.invalid/hook", "cannot be resolved"),
    ],
)
def test_unsafe_targets_are_refused(url: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        check_target(url, ())


@pytest.mark.parametrize(
    ("url", "allow"),
    [
        ("http://127.0.0.1:8080/x", ("127.0.0.1/32",)),
        ("http://127.0.0.1/x", ("127.0.0.1",)),
        ("http://localhost/x", ("localhost",)),
        ("http://LocalHost/x", ("localhost",)),
        ("http://10.1.2.3/", ("10.0.0.0/8",)),
        ("http://[::1]/", ("::1/128",)),
    ],
)
def test_allow_list_lets_a_host_or_network_through(url: str, allow: tuple[str, ...]) -> None:
    check_target(url, allow)


def test_allow_list_is_exact() -> None:
    with pytest.raises(ValueError, match="loopback"):
        check_target("http://127.0.0.2/x", ("127.0.0.1/32", "localhost"))
    with pytest.raises(ValueError, match="private"):
        check_target("http://10.1.2.3/", ("10.1.2.0/31", "10.1.2.3.example"))


# --- signatures -------------------------------------------------------------------------------


def test_sign_known_vector() -> None:
    # RFC 4231, test case 2.
    assert sign("Jefe", b"what do ya want for nothing?") == (
        "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    )


def test_verify_round_trip_and_refusals() -> None:
    body = b'{"job_id":"1-abc","status":"completed"}'
    signature = sign(SECRET, body)
    assert verify(SECRET, body, signature)
    assert not verify(SECRET, body + b" ", signature)
    assert not verify("another-secret", body, signature)
    assert not verify(SECRET, body, signature.removeprefix("sha256="))
    assert not verify(SECRET, body, "sha256=zz")
    assert not verify(SECRET, body, "sha256=é")


# --- the sender, end to end -------------------------------------------------------------------


class Receiver:
    """A tiny HTTP/1.1 server: keeps every request and answers with the next scripted status
    (the last one repeats)."""

    def __init__(self, statuses: list[int]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hooks/fanout?k=v"
        self.statuses = statuses
        self.requests: list[tuple[str, dict[str, str], bytes]] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            headers = {}
            for line in head[1:]:
                if line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            status = self.statuses[min(len(self.requests), len(self.statuses) - 1)]
            self.requests.append((head[0], headers, body))
            writer.write(
                f"HTTP/1.1 {status} X\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok".encode()
            )
            await writer.drain()
        finally:
            writer.close()
            await writer.wait_closed()


class Running:
    """A CallbackSender and a Receiver on one event loop in a thread, until stop()."""

    def __init__(self, settings: ConsumerSettings, receiver: Receiver, **options: Any) -> None:
        self.settings = settings
        self.receiver = receiver
        self.options = options
        self.loop = asyncio.new_event_loop()
        self.main: asyncio.Task[None] | None = None
        self.error: BaseException | None = None
        self.started = threading.Event()
        self.thread = threading.Thread(target=self._thread, daemon=True)
        self.thread.start()
        assert self.started.wait(10), "the sender's loop did not start"

    def _thread(self) -> None:
        try:
            self.loop.run_until_complete(self._main())
        except BaseException as exc:  # surfaced by stop()
            self.error = exc
        finally:
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.run_until_complete(self.loop.shutdown_default_executor())
            self.loop.close()

    async def _main(self) -> None:
        server = await asyncio.start_server(self.receiver.handle, "127.0.0.1", self.receiver.port)
        client = connect(self.settings.redis_url)
        sender = CallbackSender(client, self.settings, **self.options)
        task = asyncio.create_task(sender.run())
        self.main = task
        self.started.set()
        try:
            await task
        except asyncio.CancelledError:
            pass
        finally:
            await sender.close()
            await client.aclose()
            server.close()
            await server.wait_closed()

    def stop(self) -> None:
        if self.main is not None and self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.main.cancel)
        self.thread.join(10)
        assert not self.thread.is_alive(), "the sender did not stop"
        if self.error is not None:
            raise self.error


def settings(redis_server: RedisServer, **env: str) -> ConsumerSettings:
    return consumer_settings(
        {
            "FANOUT_REDIS_URL": redis_server.url,
            "FANOUT_PAGE_TOKENS": f"{PAGE}={PAGE_TOKEN}",
            "FANOUT_SHARDS": "2",
            "FANOUT_CONSUMER_NAME": "callbacks-test",
            "FANOUT_CALLBACK_SECRETS": f"acme={SECRET}",
            "FANOUT_CALLBACK_ALLOW": "127.0.0.1/32",
            **env,
        }
    )


def ended_job(r: redis.Redis, callback_url: str, tenant: str = "acme", shard: int = 1) -> str:
    """A completed job's hash, as the scripts leave it, and its entry on the callbacks stream."""
    job_id = keys.new_job_id(shard)
    r.hset(
        keys.JobKeys.of(job_id).hash,
        mapping={
            "status": "completed",
            "tenant": tenant,
            "page_id": PAGE,
            "total": 10,
            "sent": 8,
            "failed": 2,
            "skipped": 0,
            "indoubt": 1,
            "messaging_type": "MESSAGE_TAG",
            "tag": "POST_PURCHASE_UPDATE",
            "metadata": '{"campaign":"shipping"}',
            "code:551": 2,
            "callback_url": callback_url,
            "created_at": 1_700_000_000_000,
            "started_at": 1_700_000_001_000,
            "finished_at": 1_700_000_003_000,
        },
    )
    r.xadd(keys.callbacks(shard), {"job": job_id})
    return job_id


def outcome(r: redis.Redis, job_id: str) -> dict[str, str]:
    fields = cast(
        list[bytes | None],
        r.hmget(
            keys.JobKeys.of(job_id).hash,
            ["callback_status", "callback_attempts", "callback_error"],
        ),
    )
    names = ("status", "attempts", "error")
    return {n: v.decode() for n, v in zip(names, fields, strict=True) if v is not None}


def settled(r: redis.Redis, job_id: str) -> dict[str, str] | None:
    """The recorded outcome once it is final, else None."""
    result = outcome(r, job_id)
    return result if result.get("status") in ("delivered", "failed") else None


def wait_settled(r: redis.Redis, job_id: str, what: str) -> dict[str, str]:
    result = wait_for(lambda: settled(r, job_id), 10, what)
    assert result is not None
    return result


def assert_streams_empty(r: redis.Redis) -> None:
    for shard in range(2):
        stream = keys.callbacks(shard)
        assert r.xlen(stream) == 0
        assert r.xpending(stream, keys.CALLBACK_GROUP)["pending"] == 0


def test_delivers_the_signed_job_view_once(
    redis_server: RedisServer, r: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="fanout.consumer")
    receiver = Receiver([200])
    job_id = ended_job(r, receiver.url)
    running = Running(settings(redis_server), receiver)
    try:
        result = wait_settled(r, job_id, "the callback to be delivered")
    finally:
        running.stop()

    assert result == {"status": "delivered", "attempts": "1", "error": ""}
    assert len(receiver.requests) == 1
    line, headers, body = receiver.requests[0]
    assert line == "POST /hooks/fanout?k=v HTTP/1.1"
    assert headers["content-type"] == "application/json"
    assert headers["user-agent"] == "fanout"
    assert headers["x-fanout-job"] == job_id
    assert headers["host"] == f"127.0.0.1:{receiver.port}"
    assert verify(SECRET, body, headers["x-fanout-signature"])

    sent = json.loads(body)
    assert sent["job_id"] == job_id
    assert sent["status"] == "completed"
    assert (sent["sent"], sent["failed"], sent["error_codes"]) == (8, 2, {"551": 2})
    stored = cast(dict[bytes, bytes], r.hgetall(keys.JobKeys.of(job_id).hash))
    raw = {k.decode(): v for k, v in stored.items()}
    for name in ("callback_status", "callback_attempts", "callback_error"):
        raw.pop(name)
    assert sent == msgspec.to_builtins(jobview.view(job_id, raw))
    assert_streams_empty(r)

    logged = "\n".join(str(record.__dict__) for record in caplog.records)
    assert "callback delivered" in logged
    assert SECRET not in logged
    assert headers["x-fanout-signature"] not in logged


def test_retries_until_a_2xx(redis_server: RedisServer, r: redis.Redis) -> None:
    receiver = Receiver([500, 503, 200])
    job_id = ended_job(r, receiver.url)
    running = Running(settings(redis_server), receiver, base_delay_s=0.01)
    try:
        result = wait_settled(r, job_id, "the callback to be delivered")
    finally:
        running.stop()
    assert result == {"status": "delivered", "attempts": "3", "error": ""}
    assert len(receiver.requests) == 3
    bodies = {body for _, _, body in receiver.requests}
    assert len(bodies) == 1  # the same view each time
    assert_streams_empty(r)


def test_gives_up_after_the_attempt_budget(redis_server: RedisServer, r: redis.Redis) -> None:
    receiver = Receiver([500])
    job_id = ended_job(r, receiver.url)
    running = Running(
        settings(redis_server, FANOUT_CALLBACK_ATTEMPTS="3"), receiver, base_delay_s=0.01
    )
    try:
        result = wait_settled(r, job_id, "the callback to fail")
    finally:
        running.stop()
    assert result == {"status": "failed", "attempts": "3", "error": "HTTP 500"}
    assert len(receiver.requests) == 3
    assert_streams_empty(r)


def test_refused_target_fails_at_once_and_unsigned_tenant_still_gets_its_callback(
    redis_server: RedisServer, r: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="fanout.consumer")
    receiver = Receiver([200])
    # 127.0.0.2 is loopback and outside FANOUT_CALLBACK_ALLOW: refused before any connection.
    refused = ended_job(r, f"http://127.0.0.2:{receiver.port}/hook", shard=0)
    unsigned = ended_job(r, receiver.url, tenant="other", shard=1)
    unsigned_too = ended_job(r, receiver.url, tenant="other", shard=1)
    gone = ended_job(r, receiver.url, shard=0)
    r.delete(keys.JobKeys.of(gone).hash)  # swept before its callback ran
    running = Running(settings(redis_server), receiver, base_delay_s=0.01)
    try:
        wait_for(
            lambda: (
                all(settled(r, j) for j in (refused, unsigned, unsigned_too))
                and r.xlen(keys.callbacks(0)) == 0
            ),
            10,
            "the callbacks to settle",
        )
    finally:
        running.stop()

    result = outcome(r, refused)
    assert (result["status"], result["attempts"]) == ("failed", "1")
    assert "loopback" in result["error"]
    assert outcome(r, unsigned)["status"] == "delivered"
    assert r.exists(keys.JobKeys.of(gone).hash) == 0  # not recreated by the outcome
    assert len(receiver.requests) == 2
    for _, headers, _ in receiver.requests:
        assert "x-fanout-signature" not in headers
    assert {h["x-fanout-job"] for _, h, _ in receiver.requests} == {unsigned, unsigned_too}
    warnings = [rec for rec in caplog.records if "unsigned" in rec.getMessage()]
    assert len(warnings) == 1  # once per tenant
    assert_streams_empty(r)


def test_takes_over_the_entry_of_a_dead_consumer(redis_server: RedisServer, r: redis.Redis) -> None:
    receiver = Receiver([200])
    job_id = ended_job(r, receiver.url)
    stream = keys.callbacks(1)
    r.xgroup_create(stream, keys.CALLBACK_GROUP, id="0", mkstream=True)
    taken = cast(
        list[Any], r.xreadgroup(keys.CALLBACK_GROUP, "dead-consumer", {stream: ">"}, count=1)
    )
    assert taken and len(taken[0][1]) == 1  # read, never acknowledged: its consumer died
    running = Running(settings(redis_server), receiver, claim_idle_ms=100)
    try:
        result = wait_settled(r, job_id, "the callback to be taken over")
    finally:
        running.stop()
    assert result["status"] == "delivered"
    assert len(receiver.requests) == 1
    assert_streams_empty(r)


def test_carries_on_when_redis_comes_back_empty(
    redis_server: RedisServer, r: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="fanout.consumer")
    receiver = Receiver([200])
    running = Running(settings(redis_server), receiver)
    try:
        wait_for(lambda: r.xinfo_groups(keys.callbacks(1)), 10, "the sender to create its groups")
        redis_server.proc.kill()
        redis_server.proc.wait()
        wait_for(
            lambda: any("read failed" in rec.getMessage() for rec in caplog.records),
            10,
            "the sender to notice Redis is gone",
        )
        # Back on the same port with nothing in it: the streams and groups are gone too.
        redis_server.proc = subprocess.Popen(
            [
                *("redis-server", "--port", str(redis_server.port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no", "--dir", str(redis_server.workdir)),
            ],
            stdout=subprocess.DEVNULL,
        )
        wait_for(r.ping, 10, "redis-server to answer again")
        job_id = ended_job(r, receiver.url)
        result = wait_settled(r, job_id, "the callback after the outage")
    finally:
        running.stop()
    assert result["status"] == "delivered"
    assert_streams_empty(r)
