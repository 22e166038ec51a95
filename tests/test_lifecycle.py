"""Between submit and done: pause, resume and cancel across the fleet, scheduling, idempotent
submits, answering small jobs in one call, listing, live events, and retention."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from conftest import API_TOKENS, OTHER_PAGE, PAGE, Stack, psids, wait_for

from shared import keys


def body(n: int, offset: int = 0, **extra: Any) -> dict[str, Any]:
    return {
        "page_id": PAGE,
        "message": {"text": "Hi"},
        "recipients": psids(n, offset),
        "messaging_type": "UPDATE",
        **extra,
    }


def requests_seen(stack: Stack) -> int:
    assert stack.fake is not None
    return int(stack.fake.stats()["requests"])


def test_pause_stops_the_fleet_and_resume_finishes_exactly_once(stack: Stack) -> None:
    stack.start_fakegraph("--latency-ms", "30")
    api = stack.start_producer()
    stack.start_consumer("c1", FANOUT_RATE_LIMIT="400")
    stack.start_consumer("c2", FANOUT_RATE_LIMIT="400")
    job_id = stack.submit(psids(3000))
    wait_for(lambda: stack.job(job_id)["sent"] >= 300, 30, "delivery under way")
    paused = api.post(f"/v1/jobs/{job_id}/pause")
    assert paused.status_code == 200 and paused.json()["status"] == "paused"
    # Within a second the fleet stops: in-flight sends finish, nothing new starts.
    time.sleep(1.0)  # the claim under test is "within one second"
    before = requests_seen(stack)
    time.sleep(1.0)  # and then nothing more for a while
    assert requests_seen(stack) == before
    job = stack.job(job_id)
    assert job["status"] == "paused" and job["sent"] < 3000
    assert job["sent"] == before  # every send that went out is recorded
    resumed = api.post(f"/v1/jobs/{job_id}/resume")
    assert resumed.json()["status"] in ("running", "pending")
    job = stack.wait_done(job_id, 60)
    assert job["status"] == "completed" and job["sent"] == 3000
    assert stack.fake is not None
    stats = stack.fake.stats()
    assert stats["unique"] == 3000 and stats["duplicates"] == 0


def test_cancel_ends_cancelled_and_counts_add_up(stack: Stack) -> None:
    stack.start_fakegraph("--latency-ms", "30")
    api = stack.start_producer()
    stack.start_consumer("c1", FANOUT_RATE_LIMIT="500")
    job_id = stack.submit(psids(5000))
    wait_for(lambda: stack.job(job_id)["sent"] >= 200, 30, "delivery under way")
    answer = api.post(f"/v1/jobs/{job_id}/cancel")
    assert answer.status_code == 200 and answer.json()["status"] == "cancelled"
    job = wait_for(lambda: (j := stack.job(job_id))["finished_at"] and j, 20, "cancel to settle")
    assert job["status"] == "cancelled" and job["reason"] == "cancelled by request"
    assert job["sent"] + job["failed"] + job["skipped"] == 5000
    assert job["skipped"] > 0
    assert stack.fake is not None
    assert stack.fake.stats()["delivered"] == job["sent"]
    # Ended jobs cannot be paused; cancelling again changes nothing.
    assert api.post(f"/v1/jobs/{job_id}/pause").status_code == 409
    assert api.post(f"/v1/jobs/{job_id}/cancel").json()["status"] == "cancelled"


def test_cancel_a_paused_job_skips_the_rest_at_once(stack: Stack) -> None:
    stack.start_fakegraph()
    api = stack.start_producer()
    job_id = stack.submit(psids(500))  # no consumer yet
    assert api.post(f"/v1/jobs/{job_id}/pause").json()["status"] == "paused"
    job = api.post(f"/v1/jobs/{job_id}/cancel").json()
    assert job["status"] == "cancelled"
    assert (job["sent"], job["failed"]) == (0, 0)
    # The window released before the pause is still in the stream: a consumer settles it.
    stack.start_consumer("c1")
    wait_for(lambda: stack.job(job_id)["skipped"] == 500, 20, "skipped counted")
    assert requests_seen(stack) == 0


def test_send_at_holds_the_job_until_then(stack: Stack) -> None:
    stack.start_fakegraph()
    stack.start_producer()
    stack.start_consumer("c1")
    when = datetime.now(UTC) + timedelta(seconds=2)
    job_id = stack.submit(psids(50), send_at=when.isoformat())
    job = stack.job(job_id)
    assert job["status"] == "scheduled" and job["send_at"] is not None
    assert requests_seen(stack) == 0
    job = stack.wait_done(job_id, 30)
    assert job["status"] == "completed" and job["sent"] == 50
    started = datetime.fromisoformat(job["started_at"].replace("Z", "+00:00"))
    assert started >= when - timedelta(milliseconds=5)


def test_bad_send_at_wait_and_idempotency_key_are_422(stack: Stack) -> None:
    api = stack.start_producer()
    cases = [
        ({}, body(5, send_at="tomorrow"), "send_at"),
        ({}, body(5, send_at="2026-12-01T09:00:00"), "send_at"),  # no time zone
        ({}, body(5, send_at="2999-01-01T00:00:00Z"), "send_at"),
        ({}, body(5, send_at="2020-01-01T00:00:00Z"), "send_at"),  # in the past
        ({"params": {"wait": "26"}}, body(5), "wait"),
        ({"params": {"wait": "soon"}}, body(5), "wait"),
        ({"headers": {"Idempotency-Key": "has space"}}, body(5), "Idempotency-Key"),
    ]
    for extra, payload, field in cases:
        answer = api.post("/v1/jobs", json=payload, **extra)
        assert answer.status_code == 422, (field, answer.text)
        assert answer.json()["error"]["field"] == field
    assert stack.r.dbsize() == 0


def test_idempotency_key_returns_the_same_job(stack: Stack) -> None:
    api = stack.start_producer()
    headers = {"Idempotency-Key": "order-42"}
    first = api.post("/v1/jobs", json=body(30), headers=headers)
    second = api.post("/v1/jobs", json=body(30), headers=headers)
    assert first.status_code == second.status_code == 202
    assert first.json()["job_id"] == second.json()["job_id"]
    other = api.post("/v1/jobs", json=body(31), headers=headers)
    assert other.status_code == 422
    assert other.json()["error"]["code"] == "idempotency_conflict"
    # Another tenant's identical key is theirs alone.
    theirs = httpx.post(
        str(api.base_url).rstrip("/") + "/v1/jobs",
        json=body(30, page_id=OTHER_PAGE),
        headers={**headers, "Authorization": f"Bearer {API_TOKENS['other']}"},
    )
    assert theirs.json()["job_id"] != first.json()["job_id"]
    listed = api.get("/v1/jobs").json()["items"]
    assert [j["job_id"] for j in listed] == [first.json()["job_id"]]
    # The retry created nothing: two job hashes in all, ours and theirs, and no stray backlog.
    job_keys = [k.decode() for k in stack.r.scan_iter("fanout:*:job:*")]
    assert len([k for k in job_keys if k.count(":") == 3]) == 2
    assert not [k for k in job_keys if k.endswith(":backlog")]


def test_wait_answers_small_jobs_in_one_call(stack: Stack) -> None:
    stack.start_fakegraph()
    api = stack.start_producer()
    stack.start_consumer("c1")
    done = api.post("/v1/jobs", json=body(20), params={"wait": "15"})
    assert done.status_code == 200
    job = done.json()
    assert job["status"] == "completed" and job["sent"] == 20
    assert job["progress"] == 1.0 and job["eta_s"] == 0.0
    # Too big to finish in the wait: the usual 202.
    stack.consumers[0].stop()
    late = api.post("/v1/jobs", json=body(500, 1000), params={"wait": "0.3"})
    assert late.status_code == 202 and late.json()["status"] == "pending"


def every_job(api: httpx.Client, page_size: int) -> list[str]:
    """The tenant's job ids, page by page, following ``next`` to the end."""
    seen: list[str] = []
    after = None
    while True:
        params = {"limit": str(page_size), **({"after": after} if after else {})}
        page = api.get("/v1/jobs", params=params).json()
        seen += [j["job_id"] for j in page["items"]]
        after = page["next"]
        if after is None:
            return seen


def test_list_newest_first_with_status_filter_and_paging(stack: Stack) -> None:
    api = stack.start_producer()
    ids = [api.post("/v1/jobs", json=body(5, i * 10)).json()["job_id"] for i in range(5)]
    api.post(f"/v1/jobs/{ids[1]}/cancel")
    seen = every_job(api, page_size=2)
    assert seen == list(reversed(ids))
    cancelled = api.get("/v1/jobs", params={"status": "cancelled"}).json()["items"]
    assert [j["job_id"] for j in cancelled] == [ids[1]]
    assert api.get("/v1/jobs", params={"status": "nope"}).status_code == 422
    other = {"Authorization": f"Bearer {API_TOKENS['other']}"}
    assert (
        httpx.get(str(api.base_url).rstrip("/") + "/v1/jobs", headers=other).json()["items"] == []
    )


def test_events_stream_until_the_job_ends(stack: Stack) -> None:
    stack.start_fakegraph("--latency-ms", "10")
    api = stack.start_producer()
    stack.start_consumer("c1", FANOUT_RATE_LIMIT="1000")
    job_id = stack.submit(psids(1000))
    events: list[tuple[str, dict[str, Any]]] = []
    with api.stream("GET", f"/v1/jobs/{job_id}/events", timeout=60) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        name = ""
        for line in response.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                events.append((name, json.loads(line[6:])))
    assert events[-1][0] == "end" and events[-1][1]["status"] == "completed"
    sent = [data["sent"] for name, data in events if name == "job"]
    assert sent == sorted(sent) and len(sent) >= 2  # it moved, and only forwards
    assert api.get("/v1/jobs/0-000000000000000000000000/events").status_code == 404


def test_retention_deletes_ended_jobs(stack: Stack) -> None:
    stack.start_fakegraph()
    api = stack.start_producer()
    stack.start_consumer("c1", FANOUT_RETENTION="1s")
    job_id = stack.submit(psids(200))
    stack.wait_done(job_id, 30)
    k = keys.JobKeys.of(job_id)
    wait_for(lambda: api.get(f"/v1/jobs/{job_id}").status_code == 404, 15, "job swept")
    for key in (k.hash, k.backlog, k.attempted, k.sent, k.failed, k.indoubt, k.errors):
        assert not stack.r.exists(key)
    assert stack.r.zcard(keys.ended(k.shard)) == 0
    assert stack.r.xlen(k.work) == 0
    text = api.get("/metrics").text
    assert 'fanout_jobs{status="completed"} 0.0' in text


def test_completion_callback_is_signed_and_private_targets_are_refused(stack: Stack) -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from conftest import free_port

    from shared.callbacks import verify

    received: list[tuple[dict[str, str], bytes]] = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((dict(self.headers), body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    port = free_port()
    server = ThreadingHTTPServer(("127.0.0.1", port), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        stack.env["FANOUT_CALLBACK_ALLOW"] = "127.0.0.1/32"
        stack.start_fakegraph()
        api = stack.start_producer()
        stack.start_consumer("c1", FANOUT_CALLBACK_SECRETS="acme=hook-secret-1")
        url = f"http://127.0.0.1:{port}/hooks/fanout"
        job_id = stack.submit(psids(120), callback_url=url)
        stack.wait_done(job_id, 30)
        wait_for(lambda: received, 20, "the callback")
        headers, raw = received[0]
        sent = json.loads(raw)
        assert sent["job_id"] == job_id and sent["status"] == "completed" and sent["sent"] == 120
        assert verify("hook-secret-1", raw, headers["X-Fanout-Signature"])
        assert not verify("another-secret", raw, headers["X-Fanout-Signature"])
        wait_for(lambda: stack.r.hget(keys.JobKeys.of(job_id).hash, "callback_status"), 10, "x")
        assert len(received) == 1
        # A callback into a private network is refused at submit, and nothing is written.
        before = stack.r.dbsize()
        refused = api.post("/v1/jobs", json=body(5, callback_url="http://10.0.0.5/hook"))
        assert refused.status_code == 422
        assert refused.json()["error"]["field"] == "callback_url"
        assert stack.r.dbsize() == before
    finally:
        server.shutdown()
        server.server_close()


def test_list_paging_skips_none_of_jobs_created_in_the_same_millisecond(stack: Stack) -> None:
    api = stack.start_producer()
    ids = [api.post("/v1/jobs", json=body(5, i * 10)).json()["job_id"] for i in range(5)]
    for job_id in ids:  # as if all five had been created in one millisecond
        k = keys.JobKeys.of(job_id)
        stack.r.zadd(keys.tenant_jobs("acme", k.shard), {job_id: 1_700_000_000_000})
    seen = every_job(api, page_size=2)
    assert sorted(seen) == sorted(ids) and len(seen) == 5
    assert api.get("/v1/jobs", params={"after": "12345"}).status_code == 422
