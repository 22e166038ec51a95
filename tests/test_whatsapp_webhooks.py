"""WhatsApp webhooks in (issue 17, item 5): ``/webhooks/whatsapp`` driven over HTTP with bodies
signed as Meta signs them, processed by a real consumer on a real redis-server.

Payloads as Meta documents them:
https://developers.facebook.com/documentation/business-messaging/whatsapp/webhooks/reference/messages/status/
(statuses), .../webhooks/reference/messages (inbound messages) and
.../webhooks/reference/phone_number_quality_update (quality changes).

The status test replays a generated set with a known truth (who was delivered, who read, who
failed on one device and was delivered on another), shuffled and with duplicates, and checks the
job's counts equal that truth exactly, then replays it all again and checks nothing moved.
"""

from __future__ import annotations

import contextlib
import json
import random
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import redis
from conftest import API_TOKENS, PAGE, PAGE_TOKEN, FakeGraph, Stack, wait_for
from redis_cluster import Cluster, ClusterStack
from test_page import CHROMIUM, CHROMIUM_ARGS, needs_browser

from services.fakegraph.webhooks import display_number as fake_display

with contextlib.suppress(ImportError):  # the dev extra installs it; needs_browser skips then
    from playwright.sync_api import expect, sync_playwright
from shared import keys, suppressions, webhooks, window
from shared.providers import whatsapp_webhooks as wa

SECRET = "app-secret-0123456789abcdef"
VERIFY = "verify-token-0123456789"
HOOK = "/webhooks/whatsapp"
NUMBER = "106540352242922"  # a phone_number_id, as Meta's examples spell them
DISPLAY = "15550783881"
WABA = "102290129340398"


def _person(i: int) -> str:
    return str(447700900000 + i)


def _notification(
    statuses: list[dict[str, Any]] | None = None,
    messages: list[dict[str, Any]] | None = None,
    number: str = NUMBER,
) -> dict[str, Any]:
    value: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": DISPLAY, "phone_number_id": number},
    }
    if statuses is not None:
        value["statuses"] = statuses
    if messages is not None:
        value["contacts"] = [{"profile": {"name": "Kerry"}, "wa_id": m["from"]} for m in messages]
        value["messages"] = messages
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": WABA, "changes": [{"value": value, "field": "messages"}]}],
    }


def _quality(event: str, display: str = DISPLAY) -> dict[str, Any]:
    value = {"display_phone_number": display, "event": event, "current_limit": "TIER_250"}
    return {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": WABA,
                "time": int(time.time()),
                "changes": [{"value": value, "field": "phone_number_quality_update"}],
            }
        ],
    }


def _status(job_id: str, pos: int, status: str, ts: int, **extra: Any) -> dict[str, Any]:
    return {
        "id": f"wamid.HBgL{job_id[-8:]}{pos:06d}",
        "status": status,
        "timestamp": str(ts),
        "recipient_id": _person(pos),
        "biz_opaque_callback_data": webhooks.metadata(job_id, pos),
        **extra,
    }


def _pricing(category: str = "marketing") -> dict[str, Any]:
    return {"billable": True, "pricing_model": "PMP", "type": "regular", "category": category}


def _failed(code: int = 131026) -> list[dict[str, Any]]:
    return [
        {
            "code": code,
            "title": "Message undeliverable",
            "message": "Message undeliverable",
            "error_data": {"details": "Message Undeliverable."},
        }
    ]


def _post(api: httpx.Client, payload: dict[str, Any], secret: str = SECRET) -> httpx.Response:
    # json.dumps escapes non-ASCII as \\uXXXX: the form Meta signs.
    body = json.dumps(payload).encode()
    return api.post(
        HOOK,
        content=body,
        headers={
            "Content-Type": "application/json",
            "X-Hub-Signature-256": webhooks.sign(secret, body),
        },
    )


def _inbox_total(r: redis.Redis, shards: int = 2) -> int:
    return sum(int(r.xlen(keys.inbox(s))) for s in range(shards))


def _job(r: redis.Redis, total: int, number: str = NUMBER, shard: int = 0) -> str:
    """A running WhatsApp job of the number as the ledger holds it (the sends are not what
    these tests are about)."""
    job_id = keys.new_job_id(shard)
    k = keys.JobKeys.of(job_id)
    fields = {
        "total": total,
        "status": "running",
        "page_id": number,
        "channel": "whatsapp",
        "tenant": "acme",
    }
    r.hset(k.hash, mapping=fields)
    r.hincrby(k.stats, "running", 1)
    r.zadd(keys.page_jobs(number), {job_id: int(time.time() * 1000)})
    return job_id


def _suppressed(r: redis.Redis, number: str, person: str) -> bytes | None:
    """The person's entry on the number's suppression list ("<ms> <code>"), or None."""
    found: bytes | None = r.hget(suppressions.key_of(number, person), person)  # type: ignore[assignment]
    return found


def _counts(r: redis.Redis, job_id: str) -> dict[str, int]:
    raw = r.hgetall(keys.JobKeys.of(job_id).hash)
    names = ("delivered", "read", "undelivered", "sent", "failed", "skipped")
    return {n: int(raw.get(n.encode(), 0)) for n in names}


@pytest.fixture
def hearing(stack: Stack) -> Iterator[Stack]:
    stack.env["FANOUT_APP_SECRET"] = SECRET
    stack.env["FANOUT_WEBHOOK_VERIFY_TOKEN"] = VERIFY
    yield stack


def test_verification_and_refusals_as_for_messenger(hearing: Stack) -> None:
    api = hearing.start_producer()
    ok = api.get(
        HOOK, params={"hub.mode": "subscribe", "hub.verify_token": VERIFY, "hub.challenge": "7y"}
    )
    assert (ok.status_code, ok.text) == (200, "7y")
    wrong = api.get(
        HOOK, params={"hub.mode": "subscribe", "hub.verify_token": "nope", "hub.challenge": "1"}
    )
    assert wrong.status_code == 403
    assert wrong.json()["error"]["field"] == "hub.verify_token"
    assert VERIFY not in wrong.text
    api.headers.pop("Authorization")  # Meta sends no bearer token
    payload = _notification(statuses=[])
    bad = _post(api, payload, secret="another-secret")
    assert (bad.status_code, bad.json()["error"]["code"]) == (401, "bad_signature")
    unsigned = api.post(HOOK, content=json.dumps(payload).encode())
    assert unsigned.status_code == 401
    assert SECRET not in bad.text + unsigned.text
    not_json = b"{not json"
    refused = api.post(
        HOOK, content=not_json, headers={"X-Hub-Signature-256": webhooks.sign(SECRET, not_json)}
    )
    assert (refused.status_code, refused.json()["error"]["code"]) == (400, "invalid_json")
    # A Messenger body on the WhatsApp route (and the reverse) is refused, naming the field.
    page = _post(api, {"object": "page", "entry": [{"id": "1001", "messaging": []}]})
    assert (page.status_code, page.json()["error"]["field"]) == (422, "object")
    body = json.dumps(payload).encode()
    other_way = api.post(
        "/webhooks/messenger",
        content=body,
        headers={"X-Hub-Signature-256": webhooks.sign(SECRET, body)},
    )
    assert (other_way.status_code, other_way.json()["error"]["field"]) == (422, "object")
    assert _inbox_total(hearing.r) == 0
    good = _post(api, payload)
    assert (good.status_code, good.text) == (200, "EVENT_RECEIVED")
    stored = [e[1] for s in range(2) for e in hearing.r.xrange(keys.inbox(s))]
    assert stored == [{b"b": body, b"c": b"whatsapp"}]  # the raw bytes, channel noted


def _truth(job_id: str, people: int, seed: int) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Every status Meta would send for a job's people, each person's fate drawn at random, and
    what the job must count once all of them are in."""
    rng = random.Random(seed)
    base = int(time.time())
    statuses: list[dict[str, Any]] = []
    fates = {"nothing": 0, "sent": 0, "delivered": 0, "read": 0, "failed": 0, "multi": 0}
    for pos in range(people):
        fate = rng.choice(
            ["nothing", "sent", "delivered", "delivered", "read", "read", "failed", "multi"]
        )
        fates[fate] += 1
        t = base + pos
        if fate != "nothing" and fate != "failed":
            statuses.append(_status(job_id, pos, "sent", t, pricing=_pricing()))
        if fate in ("delivered", "multi") or (fate == "read" and rng.random() < 0.5):
            # Meta skips 'delivered' when a message is read at once: half the readers here.
            statuses.append(_status(job_id, pos, "delivered", t + 1, pricing=_pricing()))
        if fate == "read":
            statuses.append(_status(job_id, pos, "read", t + 2, pricing=_pricing()))
        if fate in ("failed", "multi"):
            # multi: one device failed, another was delivered (in either order).
            statuses.append(_status(job_id, pos, "failed", t + 3, errors=_failed()))
    expected = {
        "delivered": fates["delivered"] + fates["read"] + fates["multi"],
        "read": fates["read"],
        "undelivered": fates["failed"],
        "failed_statuses": fates["failed"] + fates["multi"],
        "billable": fates["delivered"] + fates["read"] + fates["multi"],
    }
    return statuses, expected


def _replay(api: httpx.Client, statuses: list[dict[str, Any]], seed: int) -> int:
    """POST the statuses shuffled, about a third of them twice, in batches of 1 to 10."""
    rng = random.Random(seed)
    events = statuses + [s for s in statuses if rng.random() < 0.3]
    rng.shuffle(events)
    posts = 0
    while events:
        size = rng.randint(1, 10)
        batch, events = events[:size], events[size:]
        answer = _post(api, _notification(statuses=batch))
        assert answer.status_code == 200, answer.text
        posts += 1
    return posts


def test_statuses_shuffled_and_duplicated_count_exactly_the_truth(hearing: Stack) -> None:
    api = hearing.start_producer()
    api.headers.pop("Authorization")
    hearing.start_consumer("c1")
    r = hearing.r
    people = 600
    job_id = _job(r, people)
    other = _job(r, 10, number="999000111")  # another number's job, same positions
    statuses, expected = _truth(job_id, people, seed=17)
    # A status whose metadata names the other number's job cannot touch it.
    stray = _status(other, 3, "read", int(time.time()))
    _replay(api, [*statuses, stray], seed=1)

    def settled() -> dict[str, int] | None:
        counts = _counts(r, job_id)
        quiet = _inbox_total(r) == 0
        want = {k: expected[k] for k in ("delivered", "read", "undelivered")}
        got = {k: counts[k] for k in want}
        return counts if quiet and got == want else None

    counts = wait_for(settled, 30, "delivered/read/undelivered to equal the truth")
    # The sends' own outcome is the ledger's: receipts never touch sent/failed/skipped.
    assert (counts["sent"], counts["failed"], counts["skipped"]) == (0, 0, 0)
    assert _counts(r, other)["read"] == 0
    k = keys.JobKeys.of(job_id)
    assert r.bitcount(k.delivered) == expected["delivered"]
    assert r.bitcount(k.read) == expected["read"]
    # Read implies delivered: no read bit without its delivered bit.
    r.bitop("AND", "test:both", k.read, k.delivered)
    assert r.bitcount("test:both") == expected["read"]
    # Each failed status recorded once, with Meta's code, whatever the duplicates.
    errors = r.xrange(k.errors)
    assert len(errors) == expected["failed_statuses"]
    assert {e[1][b"code"] for e in errors} == {b"131026"}
    assert all(b"Message undeliverable" in e[1][b"message"] for e in errors)
    assert r.hget(k.hash, "billable:marketing") == str(expected["billable"]).encode()
    # 131026 (undeliverable) suppresses the person on the number's list, as the answer would.
    failed = {s["recipient_id"] for s in statuses if s["status"] == "failed"}
    listed = {p for p in map(_person, range(people)) if _suppressed(r, NUMBER, p)}
    assert listed == failed
    assert all(_suppressed(r, NUMBER, p).endswith(b" 131026") for p in failed)  # type: ignore[union-attr]
    for shard in range(2):
        assert r.xpending(keys.inbox(shard), keys.INBOX_GROUP)["pending"] == 0

    # Meta retries everything once more, in another order: nothing moves.
    _replay(api, statuses, seed=2)
    wait_for(lambda: _inbox_total(r) == 0, 30, "the replay to be processed")
    assert _counts(r, job_id) == counts
    assert len(r.xrange(k.errors)) == expected["failed_statuses"]


def test_inbound_messages_open_the_service_window(hearing: Stack) -> None:
    api = hearing.start_producer()
    api.headers.pop("Authorization")
    hearing.start_consumer("c1")
    people = [_person(i) for i in range(5)]
    now = int(time.time())
    messages = [
        {
            "from": p,
            "id": f"wamid.in{i}",
            "timestamp": str(now - i),
            "type": "text",
            "text": {"body": "hi"},
        }
        for i, p in enumerate(people)
    ]
    # An older message from the first person, arriving last, must not move the window back.
    older = {**messages[0], "id": "wamid.old", "timestamp": str(now - 3600)}
    assert _post(api, _notification(messages=messages)).status_code == 200
    assert _post(api, _notification(messages=[older])).status_code == 200
    stranger = _person(99)

    def seen() -> list[int | None] | None:
        if _inbox_total(hearing.r) != 0:
            return None
        found = _last_interactions(hearing, NUMBER, [*people, stranger])
        return found if None not in found[:-1] else None

    found = wait_for(seen, 20, "every inbound person's last interaction")
    assert found == [now - i for i in range(5)] + [None]
    # The window is the number's: the same people have none with another number.
    assert _last_interactions(hearing, "999000111", people) == [None] * 5


def _last_interactions(stack: Stack, number: str, people: list[str]) -> list[int | None]:
    pipe = stack.r.pipeline(transaction=False)
    for p in people:
        for key in window.bucket_keys(number, p):
            pipe.hget(key, p)
    return window.newest(pipe.execute())


def test_quality_downgrade_pauses_the_numbers_jobs_with_the_reason(hearing: Stack) -> None:
    api = hearing.start_producer()
    api.headers.pop("Authorization")
    hearing.start_consumer("c1")
    r = hearing.r
    job_id = _job(r, 100)
    elsewhere = _job(r, 100, number="999000111")
    # Meta names the number by its display number only: before any webhook named both, a
    # downgrade cannot be placed (logged), and an upgrade never pauses anything.
    assert _post(api, _quality("DOWNGRADE", display="+1 555 000 0000")).status_code == 200
    assert _post(api, _notification(statuses=[])).status_code == 200
    wait_for(
        lambda: r.hget(keys.wa_displays(), DISPLAY) == NUMBER.encode(),
        20,
        "the display number to be learned",
    )
    assert _post(api, _quality("UPGRADE")).status_code == 200
    wait_for(lambda: _inbox_total(r) == 0, 20, "the events to be processed")
    assert r.hget(keys.JobKeys.of(job_id).hash, "status") == b"running"

    assert _post(api, _quality("DOWNGRADE")).status_code == 200
    wait_for(
        lambda: r.hget(keys.JobKeys.of(job_id).hash, "status") == b"paused",
        20,
        "the number's job to be paused",
    )
    reason = r.hget(keys.JobKeys.of(job_id).hash, "reason").decode()
    said = f"Meta downgraded WhatsApp number {NUMBER} (messaging limit now TIER_250)"
    assert reason == f"number_quality: {said}"
    assert r.hget(keys.page_state(NUMBER), "restricted") == b"1"  # its new jobs are refused
    assert r.hget(keys.JobKeys.of(elsewhere).hash, "status") == b"running"
    # 131048 (spam rate limit) in a failed status pauses that number's jobs, as the answer would.
    spam = _status(elsewhere, 1, "failed", int(time.time()), errors=_failed(131048))
    spam["errors"][0]["title"] = "Spam rate limit hit"
    assert _post(api, _notification(statuses=[spam], number="999000111")).status_code == 200
    wait_for(
        lambda: r.hget(keys.JobKeys.of(elsewhere).hash, "status") == b"paused",
        20,
        "the other number's job to be paused",
    )
    reason = r.hget(keys.JobKeys.of(elsewhere).hash, "reason")
    assert (
        reason
        == b"page_restricted: Meta reported 131048 Spam rate limit hit: Message Undeliverable."
    )


def test_meta_payloads_parse_into_what_fanout_acts_on() -> None:
    """The reference's shapes, read without a Redis: statuses of our sends only, inbound
    senders with their time, quality events, and each number's display number."""
    job_id = keys.new_job_id(1)
    failed = _status(job_id, 4, "failed", 1_700_000_003, errors=_failed(131050))
    statuses = [
        _status(job_id, 3, "read", 1_700_000_002, pricing=_pricing("utility")),
        failed,
        {**_status(job_id, 5, "delivered", 1), "biz_opaque_callback_data": None},  # not ours
        _status(job_id, 6, "played", 1),  # a voice message played: not counted
    ]
    inbound = {"from": "447700900001", "id": "wamid.x", "timestamp": "1700000009", "type": "text"}
    body = _notification(statuses=statuses, messages=[inbound])
    body["entry"] += _quality("flagged")["entry"]
    problem = _notification()
    problem["entry"][0]["changes"][0]["value"]["errors"] = _failed(131000)
    body["entry"] += problem["entry"]
    found = wa.read(wa.notification_decoder.decode(json.dumps(body).encode()))
    assert found.numbers == {DISPLAY: NUMBER}
    assert found.receipts == [
        wa.Receipt(
            number=NUMBER,
            status="read",
            callback=webhooks.metadata(job_id, 3),
            recipient=_person(3),
            wamid=statuses[0]["id"],
            ts_s=1_700_000_002,
            billable="utility",
        ),
        wa.Receipt(
            number=NUMBER,
            status="failed",
            callback=webhooks.metadata(job_id, 4),
            recipient=_person(4),
            wamid=failed["id"],
            ts_s=1_700_000_003,
            code="131050",
            detail="131050 Message undeliverable: Message Undeliverable.",
        ),
    ]
    assert found.touches == [wa.Touch(NUMBER, "447700900001", 1_700_000_009_000)]
    assert found.quality == [wa.Quality(DISPLAY, "FLAGGED", "TIER_250")]
    detail = "131000 Message undeliverable: Message Undeliverable."
    assert found.problems == [wa.Problem(NUMBER, "131000", detail)]
    with pytest.raises(msgspec.ValidationError):
        wa.notification_decoder.decode(b'{"entry": []}')  # no object: not Meta's


# ---- end to end: fakegraph plays the Cloud API and its webhooks (services/fakegraph) ----

NUMBER_TOKEN = "EAAwhatsapptoken0123456789secret"
TEMPLATE = {"template": {"name": "order_update", "language": {"code": "en_US"}}}


def _meta(stack: Stack, webhook_config: dict[str, float] | None = None, **env: str) -> FakeGraph:
    """Producer (fakegraph needs its URL), fakegraph playing the Cloud API and its signed
    webhooks, then one consumer, all knowing the number."""
    stack.env["FANOUT_APP_SECRET"] = SECRET
    stack.env["FANOUT_WEBHOOK_VERIFY_TOKEN"] = VERIFY
    stack.env["FANOUT_WA_NUMBERS"] = f"{NUMBER}={NUMBER_TOKEN}"
    stack.env["FANOUT_TENANT_PAGES"] = f"acme={PAGE}|{NUMBER}"
    stack.env.update(env)
    api = stack.start_producer()
    tokens = f"{PAGE}={PAGE_TOKEN},{NUMBER}={NUMBER_TOKEN}"
    config = json.dumps(webhook_config or {})
    fake = stack.fake = FakeGraph(
        stack.procs,
        stack.env,
        stack.logdir,
        *("--tokens", tokens, "--wa-webhook-url", f"{api.base_url}{HOOK}"),
        *("--webhook-config", config),
    )
    stack.env["FANOUT_GRAPH_URL"] = fake.url
    fake.configure(wa_numbers=[NUMBER])
    stack.start_consumer("c1")
    return fake


def _submit(stack: Stack, people: list[str], **extra: Any) -> httpx.Response:
    assert stack.api is not None
    body = {"channel": "whatsapp", "phone_number_id": NUMBER, "message": TEMPLATE}
    return stack.api.post("/v1/jobs", json={**body, "recipients": people, **extra})


def _fake_receipts(fake: FakeGraph) -> dict[str, int]:
    data: dict[str, int] = fake.http.get("/_fake/receipts").json()
    return data


def test_the_stand_ins_statuses_out_of_order_and_twice_count_its_truth(hearing: Stack) -> None:
    knobs = {"duplicate_rate": 0.3, "reorder_rate": 0.3, "read_rate": 0.5}
    fake = _meta(
        hearing,
        {**knobs, "wa_failed_rate": 0.1, "wa_implied_rate": 0.3},
        FANOUT_WA_TIERS=f"{NUMBER}=unlimited",
    )
    people = [_person(i) for i in range(400)]
    accepted = _submit(hearing, people)
    assert accepted.status_code == 202, accepted.text
    job_id = accepted.json()["job_id"]
    assert hearing.wait_done(job_id, 60)["sent"] == 400

    def settled() -> tuple[dict[str, Any], dict[str, int]] | None:
        truth = _fake_receipts(fake)
        job = hearing.job(job_id)
        if truth["queued"] or _inbox_total(hearing.r) or truth["wa_sent"] != 400:
            return None
        counted = (job["delivered"], job["read"], job["undelivered"])
        if counted != (truth["wa_delivered"], truth["wa_read"], truth["wa_failed"]):
            return None
        return job, truth

    job, truth = wait_for(settled, 30, "delivered/read/undelivered to equal fakegraph's")
    # The knobs did something: some failed, some read (some without a delivered), some twice.
    assert 0 < truth["wa_failed"] < 100
    assert 0 < job["read"] < job["delivered"] < 400
    assert truth["duplicates"] > 0 and truth["refused"] == 0
    assert (job["sent"], job["failed"], job["skipped"]) == (400, 0, 0)
    errors = hearing.api.get(f"/v1/jobs/{job_id}/errors").json()["items"]  # type: ignore[union-attr]
    assert len(errors) == truth["wa_failed"]
    assert {e["code"] for e in errors} == {"131026"}
    fake.http.post("/_fake/replay").raise_for_status()
    wait_for(
        lambda: _fake_receipts(fake)["queued"] == 0 and _inbox_total(hearing.r) == 0,
        30,
        "the replay to be processed",
    )
    again = hearing.job(job_id)
    assert (again["delivered"], again["read"], again["undelivered"]) == (
        job["delivered"],
        job["read"],
        job["undelivered"],
    )
    # The people Meta reported undeliverable (131026) are suppressed: the next job skips them.
    second = _submit(hearing, people)
    assert second.status_code == 202, second.text
    done = hearing.wait_done(second.json()["job_id"], 60)
    assert done["skipped_reasons"] == {"suppressed": truth["wa_failed"]}
    assert done["sent"] == 400 - truth["wa_failed"]


def test_people_who_wrote_in_are_inside_the_window_and_free_of_the_tier(hearing: Stack) -> None:
    """Tier 250 (the default): 300 people outside their window are refused at submit; once 60
    of them have written to the number (inbound webhooks), the same job fits and is sent."""
    fake = _meta(hearing)
    people = [_person(i) for i in range(300)]
    refused = _submit(hearing, people)
    assert (refused.status_code, refused.json()["error"]["code"]) == (422, "tier_exceeded")
    assert "would reach 300 people" in refused.json()["error"]["message"]
    wrote = people[:60]
    fake.http.post("/_fake/wa_inbound", json={"phone_number_id": NUMBER, "people": wrote})
    now = time.time()
    wait_for(
        lambda: all(window.in_window(t, now) for t in _last_interactions(hearing, NUMBER, wrote)),
        20,
        "the 60 people's windows to open",
    )
    accepted = _submit(hearing, people)
    assert accepted.status_code == 202, accepted.text
    done = hearing.wait_done(accepted.json()["job_id"], 60)
    assert (done["sent"], done["failed"], done["skipped"]) == (300, 0, 0)


def test_a_quality_downgrade_pauses_the_numbers_running_job(hearing: Stack) -> None:
    fake = _meta(hearing, FANOUT_WA_RATE_LIMIT="20", FANOUT_WA_TIERS=f"{NUMBER}=unlimited")
    accepted = _submit(hearing, [_person(i) for i in range(2000)])
    assert accepted.status_code == 202, accepted.text
    job_id = accepted.json()["job_id"]
    # Its first statuses name the number and its display number (quality events give only that).
    wait_for(lambda: hearing.r.hexists(keys.wa_displays(), fake_display(NUMBER)), 20, "a status")
    fake.http.post(
        "/_fake/wa_quality", json={"phone_number_id": NUMBER, "event": "FLAGGED"}
    ).raise_for_status()
    paused = wait_for(
        lambda: (j := hearing.job(job_id))["status"] == "paused" and j, 10, "the job paused"
    )
    assert paused["reason"] == (
        f"number_quality: Meta flagged the quality of WhatsApp number {NUMBER}"
        " (messaging limit now TIER_250)"
    )
    assert paused["sent"] < 2000
    again = _submit(hearing, [_person(1)])
    assert again.status_code == 409, again.text  # new jobs of the number wait for a user


@pytest.mark.skipif(shutil.which("redis-cli") is None, reason="redis-cli makes the cluster")
def test_statuses_window_and_quality_on_a_redis_cluster(tmp_path: Path) -> None:
    """The same on 3 masters + 3 replicas: the inbox, the flips in each job's slot, the window
    and suppressions in the number's, the display map, the pause across slots."""
    cluster = Cluster(tmp_path)
    stack = ClusterStack(cluster)
    try:
        fake = _meta(
            stack,
            {"duplicate_rate": 0.3, "reorder_rate": 0.3, "wa_failed_rate": 0.1},
            FANOUT_WA_TIERS=f"{NUMBER}=unlimited",
        )
        r = stack.r
        jobs = [
            _submit(stack, [_person(i) for i in range(k * 1000, k * 1000 + 200)]) for k in range(3)
        ]
        ids = [j.json()["job_id"] for j in jobs]
        assert all(j.status_code == 202 for j in jobs)
        for job_id in ids:
            assert stack.wait_done(job_id, 60)["sent"] == 200

        def settled() -> dict[str, int] | None:
            truth = _fake_receipts(fake)
            views = [stack.job(j) for j in ids]
            ours = tuple(sum(v[n] for v in views) for n in ("delivered", "read", "undelivered"))
            quiet = truth["queued"] == 0 and _inbox_total(r, 4) == 0 and truth["wa_sent"] == 600
            want = (truth["wa_delivered"], truth["wa_read"], truth["wa_failed"])
            return truth if quiet and ours == want else None

        truth = wait_for(settled, 30, "delivered/read/undelivered to equal fakegraph's")
        assert truth["wa_failed"] > 0 and 0 < truth["wa_read"] < truth["wa_delivered"]
        wrote = [_person(i) for i in range(5000, 5005)]
        fake.http.post("/_fake/wa_inbound", json={"phone_number_id": NUMBER, "people": wrote})
        wait_for(
            lambda: None not in _last_interactions(stack, NUMBER, wrote), 20, "the windows to open"
        )
        fake.configure(latency_ms=500)  # long enough to pause it
        running = _submit(stack, [_person(i) for i in range(10_000, 12_000)]).json()["job_id"]
        wait_for(lambda: stack.job(running)["sent"] > 0, 20, "the job to be sending")
        fake.http.post(
            "/_fake/wa_quality", json={"phone_number_id": NUMBER, "event": "DOWNGRADE"}
        ).raise_for_status()
        paused = wait_for(
            lambda: (j := stack.job(running))["status"] == "paused" and j, 10, "the job paused"
        )
        assert paused["reason"].startswith(
            f"number_quality: Meta downgraded WhatsApp number {NUMBER}"
        )
    finally:
        stack.stop()
        cluster.stop()


@needs_browser
def test_the_job_page_shows_a_whatsapp_jobs_undelivered(hearing: Stack) -> None:
    """In a real headless Chromium (as tests/test_page.py): a WhatsApp job's counters include
    Undelivered, equal to the job's; a Messenger job's page has no such counter."""
    fake = _meta(hearing, {"wa_failed_rate": 0.2}, FANOUT_WA_TIERS=f"{NUMBER}=unlimited")
    accepted = _submit(hearing, [_person(i) for i in range(100)])
    assert accepted.status_code == 202, accepted.text
    job_id = accepted.json()["job_id"]
    hearing.wait_done(job_id, 60)
    wait_for(
        lambda: (
            (t := _fake_receipts(fake))["queued"] == 0
            and hearing.job(job_id)["undelivered"] == t["wa_failed"] > 0
        ),
        30,
        "the failed statuses to be counted",
    )
    undelivered = hearing.job(job_id)["undelivered"]
    messenger = hearing.submit(["7"])
    assert hearing.api is not None
    base = str(hearing.api.base_url).rstrip("/")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_context(locale="en-US", timezone_id="UTC").new_page()
            page.set_default_timeout(10_000)
            problems: list[str] = []
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.goto(f"{base}/")
            page.get_by_label("API token").fill(API_TOKENS["acme"])
            page.get_by_role("button", name="Sign in").click()
            page.goto(f"{base}/#job/{job_id}")
            expect(page.locator("#job-id")).to_have_attribute("title", job_id)
            expect(page.locator("#c-undelivered")).to_have_text(f"{undelivered:,}")
            expect(page.locator("#c-undelivered-box")).to_be_visible()
            page.goto(f"{base}/#job/{messenger}")
            expect(page.locator("#job-id")).to_have_attribute("title", messenger)
            expect(page.locator("#c-undelivered-box")).to_be_hidden()
            assert problems == []
        finally:
            browser.close()
