"""What operators see: metrics with stable names and bounded labels, gauges computed as KEDA
computes them, and no secret in any log line, metric or Redis key."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import redis
from conftest import API_TOKENS, PAGE_TOKEN, RedisServer, Stack, psids, wait_for

from shared import keys

NAMES = [
    "fanout_messages_total",
    "fanout_send_duration_seconds",
    "fanout_chunks_total",
    "fanout_chunks_reclaimed_total",
    "fanout_dead_letters_total",
    "fanout_rate_limited_total",
    "fanout_in_flight",
    "fanout_in_flight_peak",
    "fanout_in_flight_seconds_total",
    "fanout_sse_streams",
    "fanout_dead_letters_stored_total",
    "fanout_stream_lag",
    "fanout_stream_pending",
    "fanout_jobs",
    "fanout_http_requests_total",
    "fanout_http_request_duration_seconds",
]


def everything_in(r: redis.Redis) -> bytes:
    """Every key and value in Redis, as one blob to search."""
    out = []
    for key in r.scan_iter(count=1000):
        out.append(key)
        kind = r.type(key)
        if kind == b"string":
            out.append(r.get(key) or b"")
        elif kind == b"hash":
            out += [b"%s=%s" % kv for kv in r.hgetall(key).items()]
        elif kind == b"list":
            out += r.lrange(key, 0, -1)
        elif kind == b"zset":
            out += r.zrange(key, 0, -1)
        elif kind == b"stream":
            for _, fields in r.xrange(key):
                out += [b"%s=%s" % kv for kv in fields.items()]
    return b"\n".join(out)


def test_producer_metrics_names_labels_and_keda_gauges(stack: Stack) -> None:
    stack.start_fakegraph("--blocked", "10000000001")
    api = stack.start_producer()
    stack.start_consumer("c1", FANOUT_METRICS_PORT="0")
    job = stack.wait_done(stack.submit(psids(250)), 30)
    api.get(f"/v1/jobs/{job['job_id']}/errors")
    api.get("/v1/jobs/0-000000000000000000000000")
    api.get("/no/such/path")
    # The job has ended: its event stream sends the end at once. Counted, not timed.
    assert "event: end" in api.get(f"/v1/jobs/{job['job_id']}/events").text
    assert api.post("/v1/jobs?wait=5", json={}).status_code == 422  # a long poll, refused
    # A second job with nobody consuming it: lag as KEDA would read it.
    stack.consumers[0].stop()
    waiting = stack.submit(psids(1000, offset=10_000))
    shard = keys.JobKeys.of(waiting).shard
    text = api.get("/metrics").text
    for name in ("fanout_jobs", "fanout_stream_lag", "fanout_stream_pending", "fanout_http"):
        assert f"# TYPE {name}" in text
    assert 'fanout_jobs{status="completed"} 1.0' in text
    assert 'fanout_jobs{status="pending"} 1.0' in text
    for status in ("scheduled", "running", "paused", "failed", "cancelled"):
        assert f'fanout_jobs{{status="{status}"}} 0.0' in text  # every status is a series
    # Only the producer's own series: the consumers' would read 0 here and dilute sums.
    for name in ("fanout_dead_letters_total", "fanout_in_flight", "fanout_send_duration"):
        assert name not in text
    assert "fanout_dead_letters_stored_total" in text
    info = {g["name"]: g for g in stack.r.xinfo_groups(keys.work_stream(shard))}[
        keys.GROUP.encode()
    ]
    lag = re.search(rf'fanout_stream_lag{{shard="{shard}"}} (\S+)', text)
    assert lag is not None and float(lag.group(1)) == info["lag"] == 8  # the released window
    assert f'fanout_stream_pending{{shard="{shard}"}} {float(info["pending"])}' in text
    route = 'route="/v1/jobs/{job_id}",status="404"'
    assert re.search(
        r'fanout_http_requests_total\{method="GET",' + re.escape(route) + r"\} 1\.0", text
    )
    assert 'route="other"' in text
    events = 'route="/v1/jobs/{job_id}/events"'
    assert re.search(r"fanout_http_requests_total\{[^}]*" + re.escape(events), text)
    assert f"fanout_http_request_duration_seconds_count{{{events}}}" not in text
    assert "fanout_sse_streams 0.0" in text  # opened and closed
    # Two submits timed; the ?wait= one counted only.
    assert 'fanout_http_request_duration_seconds_count{route="/v1/jobs"} 2.0' in text
    assert re.search(
        r'fanout_http_requests_total\{method="POST",route="/v1/jobs",status="422"\}', text
    )
    assert job["job_id"] not in text and waiting not in text  # ids never become labels
    assert PAGE_TOKEN not in text and "10000000001" not in text


def test_promtool_accepts_both_outputs(stack: Stack) -> None:
    from conftest import free_port

    if shutil.which("promtool") is None:  # scripts/setup installs it: never skip silently
        pytest.fail("promtool is not installed: run scripts/setup --dev (Debian: prometheus)")

    stack.start_fakegraph()
    api = stack.start_producer()
    port = free_port()
    stack.start_consumer("c1", FANOUT_METRICS_PORT=str(port))
    stack.wait_done(stack.submit(psids(10)), 30)
    import httpx

    consumer = wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/metrics").text, 10, "metrics")
    assert "fanout_in_flight_seconds_total" in consumer and "fanout_messages_total" in consumer
    assert "fanout_http_requests" not in consumer and "fanout_jobs" not in consumer
    for text in (api.get("/metrics").text, consumer):
        check = subprocess.run(
            ["promtool", "check", "metrics"], input=text, text=True, capture_output=True
        )
        assert check.returncode == 0, check.stdout + check.stderr


def test_every_stable_name_is_exported() -> None:
    from prometheus_client import generate_latest

    from shared import metrics

    metrics.DEAD_LETTERS_STORED.set(("0",), 0)  # set at the producer's first scrape
    text = generate_latest(metrics.CONSUMER).decode() + generate_latest(metrics.PRODUCER).decode()
    for name in NAMES:
        assert f"# TYPE {name} " in text, name


def test_no_token_in_logs_metrics_or_redis(stack: Stack) -> None:
    stack.start_fakegraph("--blocked", "10000000002")
    api = stack.start_producer()
    stack.start_consumer("c1", FANOUT_LOG_LEVEL="DEBUG")
    stack.wait_done(stack.submit(psids(300)), 30)
    wrong = {"Authorization": "Bearer " + API_TOKENS["other"] + "x"}
    assert api.get("/v1/jobs/0-000000000000000000000000", headers=wrong).status_code == 401
    # A revoked token: the error path, with its reason, logs too.
    assert stack.fake is not None
    stack.fake.configure(revoked=True)
    failed = stack.wait_done(stack.submit(psids(300, offset=5000)), 30)
    assert failed["status"] == "failed"
    logs = stack.logs()
    assert "job completed" in logs and "stopping job" in logs  # the logs are really there
    secrets = [PAGE_TOKEN, *API_TOKENS.values()]
    for secret in secrets:
        assert secret not in logs
        assert secret.encode() not in everything_in(stack.r)
    for line in stack.consumers[0].output().splitlines():
        if line.startswith("{"):
            assert '"level"' in line and '"service": "consumer"' in line


def test_in_flight_a_scrape_between_bursts_still_sees() -> None:
    """A burst that starts and ends between two scrapes shows in the peak and the
    request-seconds, though the gauge reads 0 at both scrapes."""
    import time

    from prometheus_client import CollectorRegistry, generate_latest

    from shared.metrics import InFlight

    registry = CollectorRegistry()
    tracker = InFlight(registry)

    def scrape() -> dict[str, float]:
        text = generate_latest(registry).decode()
        return {m[0]: float(m[1]) for m in re.findall(r"^(fanout_\w+) (\S+)$", text, re.M)}

    assert scrape() == {
        "fanout_in_flight": 0.0,
        "fanout_in_flight_peak": 0.0,
        "fanout_in_flight_seconds_total": 0.0,
    }
    for _ in range(3):
        tracker.enter()
    time.sleep(0.05)
    for _ in range(3):
        tracker.leave()
    burst = scrape()
    assert burst["fanout_in_flight"] == 0 and burst["fanout_in_flight_peak"] == 3
    assert 0.14 <= burst["fanout_in_flight_seconds_total"] < 0.5  # 3 requests x >= 50 ms
    after = scrape()
    assert after["fanout_in_flight_peak"] == 0  # the peak is per scrape interval
    assert after["fanout_in_flight_seconds_total"] == burst["fanout_in_flight_seconds_total"]


def test_stream_gauges_read_what_keda_reads_nil_lag_included(redis_server: RedisServer) -> None:
    """KEDA's redis-streams scaler takes XINFO GROUPS lag through go-redis, which reads a nil
    lag as -1: the gauge says -1 too (and FanoutStreamLagUnknown fires on it). The dead-letter
    count comes from Redis (entries ever added), so a trimmed or capped stream keeps it."""
    import asyncio

    from prometheus_client import generate_latest
    from redis.asyncio import Redis

    from services.producer import observe
    from shared import metrics

    r = redis_server.client
    work, dead = keys.work_stream(0), keys.dead_stream(0)
    ids = [r.xadd(work, {"c": str(i)}) for i in range(3)]
    r.xgroup_create(work, keys.GROUP, id="0")
    r.xreadgroup(keys.GROUP, "c1", {work: ">"}, count=1)
    for i in range(5):
        r.xadd(dead, {"c": str(i)}, maxlen=2, approximate=False)

    async def scrape() -> str:
        client = Redis.from_url(redis_server.url)
        try:
            await observe.refresh(client, 1)
        finally:
            await client.aclose()
        return generate_latest(metrics.PRODUCER).decode()

    text = asyncio.run(scrape())
    assert 'fanout_stream_lag{shard="0"} 2.0' in text  # valid lag: as Redis says
    assert 'fanout_dead_letters_stored_total{shard="0"} 5.0' in text  # capped at 2, added 5
    # Delete an entry after the group's last delivered one: Redis can no longer tell the lag.
    r.xdel(work, ids[2])
    [group] = r.xinfo_groups(work)
    assert group["lag"] is None and group["pending"] == 1
    text = asyncio.run(scrape())
    assert 'fanout_stream_lag{shard="0"} -1.0' in text
    assert 'fanout_stream_pending{shard="0"} 1.0' in text
