"""Meta's webhooks in (issue 12): the receiver driven over HTTP with signed bodies, and the
events processed by real consumers: the window, receipts and page enforcement.

fakegraph plays Meta (services/fakegraph/webhooks.py): it signs as Meta does
(https://developers.facebook.com/documentation/business-messaging/messenger-platform/webhooks)
and says what it reported, so counts are checked against it exactly.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis
from conftest import PAGE, Proc, Stack, psids, wait_for

from shared import keys, window

SECRET = "app-secret-0123456789abcdef"
VERIFY = "verify-token-0123456789"
HOOK = "/webhooks/messenger"


def _sign(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _inbox_total(r: redis.Redis, shards: int = 2) -> int:
    return sum(int(r.xlen(keys.inbox(s))) for s in range(shards))


def _notification(*events: dict[str, Any], page: str = PAGE) -> dict[str, Any]:
    return {"object": "page", "entry": [{"id": page, "time": 1, "messaging": list(events)}]}


@pytest.fixture
def hearing(stack: Stack) -> Iterator[Stack]:
    stack.env["FANOUT_APP_SECRET"] = SECRET
    stack.env["FANOUT_WEBHOOK_VERIFY_TOKEN"] = VERIFY
    yield stack


def test_verification_answers_the_challenge_only_with_the_right_token(hearing: Stack) -> None:
    api = hearing.start_producer()
    ok = api.get(
        HOOK, params={"hub.mode": "subscribe", "hub.verify_token": VERIFY, "hub.challenge": "42x"}
    )
    assert ok.status_code == 200
    assert ok.text == "42x"
    assert ok.headers["content-type"].startswith("text/plain")
    wrong = api.get(
        HOOK, params={"hub.mode": "subscribe", "hub.verify_token": "nope", "hub.challenge": "1"}
    )
    assert wrong.status_code == 403
    assert wrong.json()["error"]["field"] == "hub.verify_token"
    assert VERIFY not in wrong.text
    not_subscribe = api.get(HOOK, params={"hub.verify_token": VERIFY, "hub.challenge": "1"})
    assert not_subscribe.status_code == 403


def test_refused_posts_record_nothing(hearing: Stack) -> None:
    api = hearing.start_producer()
    api.headers.pop("Authorization")  # Meta sends no bearer token
    body = json.dumps(_notification({"sender": {"id": "1"}, "timestamp": 1})).encode()
    json_type = {"Content-Type": "application/json"}

    def post(content: bytes | Iterator[bytes], headers: dict[str, str]) -> httpx.Response:
        return api.post(HOOK, content=content, headers={**json_type, **headers})

    wrong = post(body, {"X-Hub-Signature-256": _sign(body, "another-secret")})
    assert (wrong.status_code, wrong.json()["error"]["code"]) == (401, "bad_signature")
    assert post(body, {}).status_code == 401
    sha1 = "sha1=" + hmac.new(SECRET.encode(), body, hashlib.sha1).hexdigest()
    only_sha1 = post(body, {"X-Hub-Signature": sha1})
    assert only_sha1.status_code == 401
    assert "SHA-1" in only_sha1.json()["error"]["message"]
    big = b'{"object":"page","entry":[],"pad":"' + b"x" * (1024 * 1024) + b'"}'
    assert post(big, {"X-Hub-Signature-256": _sign(big)}).status_code == 413
    # Without Content-Length (chunked), counted as it arrives.
    chunked = post(iter([big[:600_000], big[600_000:]]), {"X-Hub-Signature-256": _sign(big)})
    assert chunked.status_code == 413
    not_json = b"this is not json"
    refused = post(not_json, {"X-Hub-Signature-256": _sign(not_json)})
    assert (refused.status_code, refused.json()["error"]["code"]) == (400, "invalid_json")
    assert SECRET not in refused.text
    assert _inbox_total(hearing.r) == 0
    good = post(body, {"X-Hub-Signature-256": _sign(body)})
    assert (good.status_code, good.text) == (200, "EVENT_RECEIVED")
    assert _inbox_total(hearing.r) == 1


def test_non_ascii_signed_as_meta_signs_it_is_accepted_byte_for_byte(hearing: Stack) -> None:
    api = hearing.start_producer()
    event = {
        "sender": {"id": "77"},
        "recipient": {"id": PAGE},
        "timestamp": 1,
        "message": {"mid": "m1", "text": "äöå ✓ 😀"},
    }
    # Meta signs an escaped-unicode serialisation (\u00e4...), lowercase hex.
    body = json.dumps(_notification(event)).encode()
    assert b"\\u00e4" in body
    answer = api.post(HOOK, content=body, headers={"X-Hub-Signature-256": _sign(body)})
    assert answer.status_code == 200
    stored = [e[1][b"b"] for s in range(2) for e in hearing.r.xrange(keys.inbox(s))]
    assert stored == [body]  # never re-serialised
    # The same text as raw UTF-8 is another byte string: its own signature still holds.
    raw = json.dumps(_notification(event), ensure_ascii=False).encode()
    assert (
        api.post(HOOK, content=raw, headers={"X-Hub-Signature-256": _sign(raw)}).status_code == 200
    )
    wrong = api.post(HOOK, content=raw, headers={"X-Hub-Signature-256": _sign(body)})
    assert wrong.status_code == 401


def _start_meta(stack: Stack, **config: float) -> None:
    """Producer first (fakegraph needs its URL), then fakegraph playing Meta, then consumers."""
    api = stack.start_producer()
    url = f"{api.base_url}{HOOK}"
    stack.start_fakegraph("--webhook-url", url, "--webhook-config", json.dumps(config))


def _metrics_port(proc: Proc) -> int:
    def port() -> int | None:
        for line in proc.output().splitlines():
            if line.startswith("{") and "metrics_port" in (logged := json.loads(line)):
                return int(logged["metrics_port"])
        return None

    return wait_for(port, 20, f"{proc.name} to log its metrics port")


def _samples(port: int, name: str) -> dict[str, float]:
    """A consumer's samples of one metric, by their label text."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    found = {}
    for line in text.splitlines():
        if line.startswith(name + "{"):
            labels, value = line[len(name) + 1 :].rsplit("} ", 1)
            found[labels] = float(value)
    return found


def _receipts(stack: Stack) -> dict[str, int]:
    assert stack.fake is not None
    data: dict[str, int] = stack.fake.http.get("/_fake/receipts").json()
    return data


def test_receipts_count_exactly_what_meta_reported_and_replays_change_nothing(
    hearing: Stack,
) -> None:
    _start_meta(hearing, duplicate_rate=0.2, reorder_rate=0.2, read_rate=0.5)
    consumer = hearing.start_consumer("c1")
    people = psids(5000)
    job_id = hearing.submit(people)
    done = hearing.wait_done(job_id, 60)
    assert done["sent"] == 5000

    def settled() -> tuple[dict[str, Any], dict[str, int]] | None:
        fake = _receipts(hearing)
        job = hearing.job(job_id)
        quiet = fake["queued"] == 0 and _inbox_total(hearing.r) == 0
        if (
            quiet
            and fake["echoes"] == 5000
            and (job["delivered"], job["read"])
            == (
                fake["delivered"],
                fake["read"],
            )
        ):
            return job, fake
        return None

    job, fake = wait_for(settled, 30, "delivered/read to match what fakegraph reported")
    # The knobs really did something: not everyone delivered or read, some POSTs twice.
    assert 4000 < job["delivered"] < 5000
    assert 1500 < job["read"] < job["delivered"]
    assert fake["duplicates"] > 0
    assert fake["refused"] == 0
    port = _metrics_port(consumer)
    # A counter moves just after its flip is in Redis: poll, briefly.
    expected = {'kind="delivered"': job["delivered"], 'kind="read"': job["read"]}
    receipts = wait_for(
        lambda: (s := _samples(port, "fanout_receipts_total")) == expected and s,
        5,
        "fanout_receipts_total to equal the job's counts",
    )
    events = _samples(port, "fanout_webhook_events_total")
    assert events['field="message_echoes"'] >= 5000  # duplicates are processed, not counted
    replayed = hearing.fake.http.post("/_fake/replay").json()["posts"]  # type: ignore[union-attr]
    assert replayed >= fake["posts"] - fake["duplicates"]
    wait_for(
        lambda: _receipts(hearing)["queued"] == 0 and _inbox_total(hearing.r) == 0,
        30,
        "the replay to be processed",
    )
    again = hearing.job(job_id)
    assert (again["delivered"], again["read"]) == (job["delivered"], job["read"])
    assert _samples(port, "fanout_receipts_total") == receipts  # no bit flipped twice
    replayed_events = _samples(port, "fanout_webhook_events_total")
    assert replayed_events['field="message_echoes"'] >= 2 * 5000
    # Processed batches are acknowledged and deleted: nothing left pending.
    for shard in range(2):
        assert hearing.r.xpending(keys.inbox(shard), keys.INBOX_GROUP)["pending"] == 0


def test_inbound_messages_open_the_window(hearing: Stack) -> None:
    _start_meta(hearing)
    hearing.start_consumer("c1")
    people = psids(200, offset=7000)
    before = int(time.time())
    assert hearing.fake is not None
    hearing.fake.http.post("/_fake/inbound", json={"page_id": PAGE, "psids": people})

    def heard() -> bool:
        # A page of 200 people writes the smallest tier of window buckets.
        found = [hearing.r.hget(window.bucket_keys(PAGE, p)[0], p) for p in people]
        return all(f is not None and int(f) >= before for f in found)

    wait_for(heard, 20, "every inbound person's last interaction")


def test_policy_enforcement_pauses_the_pages_jobs_within_a_second(hearing: Stack) -> None:
    _start_meta(hearing)
    hearing.start_consumer("c1", FANOUT_RATE_LIMIT="20")
    job_id = hearing.submit(psids(2000))
    wait_for(lambda: hearing.job(job_id)["sent"] > 0, 20, "the job to be sending")
    assert hearing.fake is not None
    reason = "Your page sent spam (test)"
    started = time.monotonic()
    hearing.fake.http.post(
        "/_fake/enforcement", json={"page_id": PAGE, "action": "block", "reason": reason}
    ).raise_for_status()
    paused = wait_for(
        lambda: (j := hearing.job(job_id))["status"] == "paused" and j, 5, "the job paused"
    )
    assert time.monotonic() - started < 1.0
    assert reason in paused["reason"]
    assert paused["page_hold"] == "page_restricted"
    body = {
        "page_id": PAGE,
        "message": {"text": "hi"},
        "recipients": ["1"],
        "messaging_type": "UPDATE",
    }
    refused = hearing.api.post("/v1/jobs", json=body)  # type: ignore[union-attr]
    assert (refused.status_code, refused.json()["error"]["code"]) == (409, "page_restricted")
