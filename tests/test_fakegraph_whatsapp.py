"""fakegraph's WhatsApp Cloud API stand-in: bodies checked as Meta checks them, the pair limit,
throughput, injected errors, the tier count, tokens, and signed status webhooks.

One server runs in a background thread for the module (tests/test_fakegraph.py's ServerThread);
every test starts from the default config and empty stats. The fake's clock is the test's where
time matters (the pair interval, the per-second throughput), so nothing sleeps.
Answer shapes: https://developers.facebook.com/docs/whatsapp/cloud-api/reference/messages and
https://developers.facebook.com/documentation/business-messaging/whatsapp/support/error-codes
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import msgspec
import pytest
from conftest import wait_for
from test_fakegraph import ServerThread

from services.fakegraph.config import WA_INJECTABLE
from services.fakegraph.server import FakeGraph, FakeGraphConfig
from services.fakegraph.webhooks import Emitter, WebhookConfig
from services.fakegraph.whatsapp import INJECTABLE

NUMBER = "106540352242922"
SEND = f"/v21.0/{NUMBER}/messages"
AUTH = {"Authorization": "Bearer wa-token"}
SECRET = "app-secret-for-tests"


def text(to: str = "15551230001", body: str = "hello", **extra: Any) -> dict[str, Any]:
    return {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": to,
        "type": "text",
        "text": {"body": body},
        **extra,
    }


def template(to: str = "15551230001", **extra: Any) -> dict[str, Any]:
    return {
        "messaging_product": "whatsapp",
        "to": to,
        "type": "template",
        "template": {
            "name": "order_update",
            "language": {"code": "en_US"},
            "components": [{"type": "body", "parameters": [{"type": "text", "text": "Ann"}]}],
        },
        **extra,
    }


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    thread = ServerThread()
    thread.start()
    yield thread
    thread.stop()


@pytest.fixture(scope="module")
def http(server: ServerThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=5.0) as client:
        yield client


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def fake(server: ServerThread, http: httpx.Client) -> Iterator[FakeGraph]:
    defaults = msgspec.to_builtins(FakeGraphConfig())
    assert http.post("/_fake/config", json=defaults).status_code == 200
    assert http.post("/_fake/reset").status_code == 200
    yield server.fake
    server.fake.whatsapp._clock = time.time
    emitter, server.fake.webhooks = server.fake.webhooks, None
    if emitter is not None and server._loop is not None:
        asyncio.run_coroutine_threadsafe(emitter.close(), server._loop).result(10)


@pytest.fixture
def clock(fake: FakeGraph) -> Clock:
    clock = Clock(1_800_000_000.0)
    fake.whatsapp._clock = clock
    return clock


def seen(http: httpx.Client) -> dict[str, Any]:
    answer = http.get("/_fake/whatsapp")
    assert answer.status_code == 200
    result: dict[str, Any] = answer.json()
    return result


def refused_with(answer: httpx.Response, code: int) -> dict[str, Any]:
    assert answer.status_code == (500 if code in (131000, 131016) else 400), answer.text
    error: dict[str, Any] = answer.json()["error"]
    assert error["code"] == code
    assert error["type"] == "OAuthException"
    if code != 190:  # Graph's token error has no "(#190)" prefix
        assert error["message"].startswith(f"(#{code}) ")
    assert len(error["fbtrace_id"]) == 11
    return error


# ---- success ----


def test_text_send_answers_contacts_and_a_wamid(fake: FakeGraph, http: httpx.Client) -> None:
    answer = http.post(SEND, json=text("+15551230001"), headers=AUTH)
    assert answer.status_code == 200
    body = answer.json()
    assert body["messaging_product"] == "whatsapp"
    assert body["contacts"] == [{"input": "+15551230001", "wa_id": "15551230001"}]
    [message] = body["messages"]
    assert message["id"].startswith("wamid.")
    assert "message_status" not in message
    sends = seen(http)["sends"]
    assert [(number, to, kind) for _, number, to, kind in sends] == [
        (NUMBER, "15551230001", "text")
    ]
    assert abs(sends[0][0] - time.time()) < 60
    assert http.get("/_fake/delivered").json() == {NUMBER: {"15551230001": 1}}


def test_template_send_is_accepted_with_its_status(fake: FakeGraph, http: httpx.Client) -> None:
    first = http.post(SEND, json=template("15551230001"), headers=AUTH).json()
    second = http.post(SEND, json=template("15551230002"), headers=AUTH).json()
    assert first["messages"][0]["message_status"] == "accepted"
    assert first["messages"][0]["id"] != second["messages"][0]["id"]
    bodies = http.get("/_fake/bodies").json()
    assert bodies["15551230002"]["template"]["name"] == "order_update"


def test_messenger_sends_on_the_same_route_are_untouched(
    fake: FakeGraph, http: httpx.Client
) -> None:
    answer = http.post(
        "/v21.0/me/messages",
        json={"recipient": {"id": "100"}, "message": {"text": "hi"}},
        headers=AUTH,
    )
    assert answer.status_code == 200
    assert set(answer.json()) == {"recipient_id", "message_id"}
    assert seen(http)["accepted"] == 0


# ---- bad bodies ----


@pytest.mark.parametrize(
    ("change", "code", "message", "details"),
    [
        (
            {"messaging_product": "messenger"},
            100,
            '(#100) Param messaging_product must be one of {WHATSAPP} - got "messenger".',
            None,
        ),
        ({"to": None}, 131008, None, "The parameter to is required."),
        ({"to": "call-me"}, 131009, None, "The parameter to is not a valid phone number."),
        ({"to": "1234567"}, 131009, None, "The parameter to is not a valid phone number."),
        ({"text": None}, 131008, None, "The parameter text is required."),
        ({"text": {"body": ""}}, 131008, None, "The parameter text['body'] is required."),
        (
            {"text": {"body": "x" * 4097}},
            100,
            "(#100) Param text['body'] must be at most 4096 characters long.",
            None,
        ),
        ({"type": "carrier_pigeon"}, 131009, None, "Parameter 'type' has an invalid value: "),
        ({"type": "template"}, 131008, None, "The parameter template is required."),
        ({"type": "image"}, 131008, None, "The parameter image is required."),
    ],
)
def test_bad_bodies_answer_metas_errors_and_send_nothing(
    fake: FakeGraph,
    http: httpx.Client,
    change: dict[str, Any],
    code: int,
    message: str | None,
    details: str | None,
) -> None:
    body = {k: v for k, v in (text() | change).items() if v is not None}
    error = refused_with(http.post(SEND, json=body, headers=AUTH), code)
    if message is not None:
        assert error["message"] == message
    if details is not None:
        assert error["error_data"]["messaging_product"] == "whatsapp"
        assert error["error_data"]["details"].startswith(details)
    assert seen(http)["accepted"] == 0
    assert http.get("/_fake/stats").json()["delivered"] == 0


@pytest.mark.parametrize(
    ("field", "details"),
    [
        ("name", "The parameter template['name'] is required."),
        ("language", "The parameter template['language'] is required."),
    ],
)
def test_a_template_needs_name_and_language(
    fake: FakeGraph, http: httpx.Client, field: str, details: str
) -> None:
    body = template()
    del body["template"][field]
    error = refused_with(http.post(SEND, json=body, headers=AUTH), 131008)
    assert error["error_data"]["details"] == details
    assert seen(http)["accepted"] == 0


def test_a_listed_number_without_messaging_product_is_refused(
    fake: FakeGraph, http: httpx.Client
) -> None:
    fake.configure(wa_numbers=[NUMBER])
    body = {"to": "15551230001", "type": "text", "text": {"body": "hi"}}
    error = refused_with(http.post(SEND, json=body, headers=AUTH), 100)
    assert error["message"] == "(#100) The parameter messaging_product is required."


def test_tokens_name_their_number(fake: FakeGraph, http: httpx.Client) -> None:
    fake.configure(tokens={"wa-token": NUMBER, "other": "999000111222333"})
    assert http.post(SEND, json=text(), headers=AUTH).status_code == 200
    other = {"Authorization": "Bearer other"}
    refused_with(http.post(SEND, json=text("15551230002"), headers=other), 190)
    unknown = {"Authorization": "Bearer nobody"}
    refused_with(http.post(SEND, json=text("15551230003"), headers=unknown), 190)
    refused_with(http.post(SEND, json=text("15551230004")), 190)
    assert seen(http)["accepted"] == 1


# ---- limits ----


def test_pair_limit_answers_131056_and_counts_the_violation(
    fake: FakeGraph, http: httpx.Client, clock: Clock
) -> None:
    assert http.post(SEND, json=text("15551230001"), headers=AUTH).status_code == 200
    clock.now += 5.9
    error = refused_with(http.post(SEND, json=text("15551230001"), headers=AUTH), 131056)
    assert error["message"] == "(#131056) (Business Account, Consumer Account) pair rate limit hit"
    assert "same phone number" in error["error_data"]["details"]
    # another person, and the same person from another number, are not limited
    assert http.post(SEND, json=text("15551230002"), headers=AUTH).status_code == 200
    other = "/v21.0/999000111222333/messages"
    assert http.post(other, json=text("15551230001"), headers=AUTH).status_code == 200
    # the interval counts from the last accepted send, not from the refused one
    clock.now += 0.1
    assert http.post(SEND, json=text("15551230001"), headers=AUTH).status_code == 200
    state = seen(http)
    assert state["pair_violations"] == 1
    assert state["accepted"] == 4
    assert http.get("/_fake/refused").json() == {"131056": {"15551230001": 1}}


def test_pair_limit_can_be_switched_off(fake: FakeGraph, http: httpx.Client) -> None:
    fake.configure(wa_pair_interval_s=0.0)
    for _ in range(3):
        assert http.post(SEND, json=text("15551230001"), headers=AUTH).status_code == 200
    assert seen(http)["pair_violations"] == 0


def test_throughput_beyond_the_numbers_rate_answers_130429(
    fake: FakeGraph, http: httpx.Client, clock: Clock
) -> None:
    fake.configure(wa_throughput=5)
    clock.now = 1_800_000_000.25
    answers = [
        http.post(SEND, json=text(f"1555123{i:04d}"), headers=AUTH).status_code for i in range(7)
    ]
    assert answers == [200] * 5 + [400] * 2
    error = refused_with(http.post(SEND, json=text("15551239999"), headers=AUTH), 130429)
    assert error["error_data"]["details"] == "Cloud API message throughput has been reached."
    clock.now += 1.0  # the next wall-clock second
    assert http.post(SEND, json=text("15551238888"), headers=AUTH).status_code == 200
    stats = http.get("/_fake/stats").json()
    assert stats["per_second"][NUMBER] == {"1800000000": 8, "1800000001": 1}
    assert stats["by_code"] == {"200": 6, "130429": 3}


@pytest.mark.parametrize("code", sorted(WA_INJECTABLE))
def test_injected_errors_answer_their_code_for_chosen_people(
    fake: FakeGraph, http: httpx.Client, code: int
) -> None:
    fake.configure(wa_errors={"15551230001": code})
    error = refused_with(http.post(SEND, json=template("15551230001"), headers=AUTH), code)
    assert error["message"] == json.loads(INJECTABLE[code].body(b"x"))["error"]["message"]
    assert http.post(SEND, json=template("15551230002"), headers=AUTH).status_code == 200
    assert http.get("/_fake/refused").json() == {str(code): {"15551230001": 1}}
    assert seen(http)["accepted"] == 1


def test_an_unknown_injected_code_is_refused_by_the_config(
    fake: FakeGraph, http: httpx.Client
) -> None:
    answer = http.post("/_fake/config", json={"wa_errors": {"15551230001": 777}})
    assert answer.status_code == 400
    assert "777" in answer.json()["error"]["message"]
    assert fake.config.wa_errors == {}


def test_spam_rate_limit_after_n_sends(fake: FakeGraph, http: httpx.Client) -> None:
    fake.configure(wa_spam_after=2)
    for i in range(2):
        assert http.post(SEND, json=template(f"155512300{i:02d}"), headers=AUTH).status_code == 200
    error = refused_with(http.post(SEND, json=template("15551230099"), headers=AUTH), 131048)
    assert error["message"] == "(#131048) Spam rate limit hit"
    assert seen(http)["accepted"] == 2


def test_window_refuses_free_form_text_with_131047_not_templates(
    fake: FakeGraph, http: httpx.Client
) -> None:
    fake.configure(wa_enforce_window=True)
    refused_with(http.post(SEND, json=text("15551230001"), headers=AUTH), 131047)
    assert http.post(SEND, json=template("15551230002"), headers=AUTH).status_code == 200
    assert http.post("/_fake/window", json={"15551230003": time.time()}).status_code == 200
    assert http.post(SEND, json=text("15551230003"), headers=AUTH).status_code == 200
    stale = {"15551230004": time.time() - 25 * 3600}
    assert http.post("/_fake/window", json=stale).status_code == 200
    refused_with(http.post(SEND, json=text("15551230004"), headers=AUTH), 131047)


def test_tier_counts_new_people_outside_a_window_and_still_accepts(
    fake: FakeGraph, http: httpx.Client, clock: Clock
) -> None:
    fake.configure(wa_tier=2)
    assert http.post("/_fake/window", json={"15551230009": clock.now}).status_code == 200
    people = ["15551230001", "15551230002", "15551230009", "15551230003", "15551230004"]
    for person in people:
        assert http.post(SEND, json=template(person), headers=AUTH).status_code == 200
    clock.now += 10
    assert http.post(SEND, json=template("15551230001"), headers=AUTH).status_code == 200
    state = seen(http)
    assert state["reached"] == {NUMBER: 4}  # 15551230009 wrote: free of the tier
    assert state["tier_violations"] == 2
    clock.now += 24 * 3600 + 1  # a moving 24 h: everyone is new again
    assert http.post(SEND, json=template("15551230005"), headers=AUTH).status_code == 200
    assert seen(http)["reached"] == {NUMBER: 1}


def test_numbers_of_a_portfolio_share_its_tier(
    fake: FakeGraph, http: httpx.Client, clock: Clock
) -> None:
    other = "999000111222333"
    fake.configure(wa_tier=2, wa_portfolios={NUMBER: "shop", other: "shop"})
    assert http.post(SEND, json=template("15551230001"), headers=AUTH).status_code == 200
    clock.now += 10  # past the pair interval: the same person from the other number
    sends = [("15551230001", other), ("15551230002", other), ("15551230003", NUMBER)]
    for person, number in sends:
        answer = http.post(f"/v21.0/{number}/messages", json=template(person), headers=AUTH)
        assert answer.status_code == 200
    state = seen(http)
    assert state["reached"] == {"shop": 3}  # the person both numbers reached counts once
    assert state["tier_violations"] == 1


# ---- status webhooks ----


class Receiver:
    """Meta's webhook receiver played by a test: keeps every POST's body and signature."""

    def __init__(self) -> None:
        self.posts: list[tuple[bytes, str]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                size = int(self.headers["Content-Length"])
                receiver.posts.append(
                    (self.rfile.read(size), self.headers.get("X-Hub-Signature-256", ""))
                )
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/webhooks/whatsapp"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def test_status_webhooks_are_signed_and_match_the_truth(
    fake: FakeGraph, http: httpx.Client, receiver: Receiver
) -> None:
    config = WebhookConfig(
        echo_delay_ms=5,
        delivery_delay_ms=20,
        read_delay_ms=40,
        delivered_rate=0.8,
        read_rate=0.5,
        duplicate_rate=0.3,
        reorder_rate=0.3,
        wa_failed_rate=0.1,
        wa_implied_rate=0.5,
        seed=7,
    )
    fake.webhooks = Emitter("", SECRET, config, wa_url=receiver.url)
    people = [f"4477009{i:05d}" for i in range(120)]
    wamids: dict[str, str] = {}
    for i, person in enumerate(people):
        body = template(person, biz_opaque_callback_data=f"fo1:0-job:{i}")
        answer = http.post(SEND, json=body, headers=AUTH)
        assert answer.status_code == 200
        wamids[answer.json()["messages"][0]["id"]] = f"fo1:0-job:{i}"

    def settled() -> dict[str, Any] | None:
        state: dict[str, Any] = http.get("/_fake/receipts").json()
        return state if state["queued"] == 0 and state["wa_sent"] == len(people) else None

    truth = wait_for(settled, 20, "every status posted")

    statuses: dict[str, set[str]] = {}
    posts = 0
    for body, signature in receiver.posts:
        expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(signature, expected)
        payload = json.loads(body)
        assert payload["object"] == "whatsapp_business_account"
        for entry in payload["entry"]:
            for change in entry["changes"]:
                assert change["field"] == "messages"
                value = change["value"]
                assert value["messaging_product"] == "whatsapp"
                assert value["metadata"]["phone_number_id"] == NUMBER
                for status in value["statuses"]:
                    # every status names the message and echoes the send's callback data
                    assert status["biz_opaque_callback_data"] == wamids[status["id"]]
                    assert status["recipient_id"] in people
                    statuses.setdefault(status["status"], set()).add(status["id"])
                    if status["status"] == "failed":
                        assert status["errors"][0]["code"] == 131026
        posts += 1
    assert posts == truth["posts"]
    assert truth["duplicates"] > 0  # some POSTs came twice
    assert statuses["sent"] == set(wamids)
    delivered = statuses.get("delivered", set()) | statuses.get("read", set())
    assert truth["wa_delivered"] == len(delivered) > 0
    assert truth["wa_read"] == len(statuses["read"]) > 0
    assert truth["wa_failed"] == len(statuses["failed"]) > 0
    assert not statuses["failed"] & delivered
    # Meta leaves "delivered" out when "read" implies it: some reads come alone
    assert statuses["read"] - statuses.get("delivered", set())


def test_inbound_and_quality_webhooks(
    fake: FakeGraph, http: httpx.Client, receiver: Receiver
) -> None:
    fake.webhooks = Emitter("", SECRET, WebhookConfig(duplicate_rate=0.0), wa_url=receiver.url)
    fake.configure(wa_enforce_window=True)
    answer = http.post(
        "/_fake/wa_inbound", json={"phone_number_id": NUMBER, "people": ["15551230001"]}
    )
    assert answer.json() == {"events": 1}
    # the person wrote: a free-form text may go to them now
    assert http.post(SEND, json=text("15551230001"), headers=AUTH).status_code == 200
    assert http.post(
        "/_fake/wa_quality", json={"phone_number_id": NUMBER, "event": "FLAGGED"}
    ).json() == {"events": 1}

    def fields() -> dict[str, dict[str, Any]] | None:
        found: dict[str, dict[str, Any]] = {}
        for body, _ in receiver.posts:
            for entry in json.loads(body)["entry"]:
                for change in entry["changes"]:
                    if change["field"] != "messages" or "messages" in change["value"]:
                        found[change["field"]] = change["value"]
        return found if len(found) == 2 else None

    found = wait_for(fields, 10, "inbound and quality posted")
    inbound = found["messages"]
    assert inbound["messages"][0]["from"] == "15551230001"
    assert inbound["messages"][0]["text"] == {"body": "hi"}
    assert inbound["metadata"]["phone_number_id"] == NUMBER
    quality = found["phone_number_quality_update"]
    assert quality["event"] == "FLAGGED"
    assert quality["current_limit"] == "TIER_250"
    assert quality["display_phone_number"] == inbound["metadata"]["display_phone_number"]


def test_webhook_hooks_need_a_wa_url(fake: FakeGraph, http: httpx.Client) -> None:
    fake.webhooks = Emitter("http://127.0.0.1:1/webhooks/messenger", SECRET)
    answer = http.post("/_fake/wa_inbound", json={"phone_number_id": NUMBER, "people": ["1"]})
    assert answer.status_code == 400
    assert "--wa-webhook-url" in answer.json()["error"]["message"]
