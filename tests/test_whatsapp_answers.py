"""WhatsApp's answer table (shared/providers/whatsapp.py), one test per row: the answer as
fakegraph sends it, over HTTP through fanout's own client (shared/provider.py), then the
classifier, asserting the verdict, the code and what the consumer does with the person.

Also the send body, as Meta documents it
(https://developers.facebook.com/docs/whatsapp/cloud-api/reference/messages): what fakegraph
received from the client, parsed.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import msgspec
import pytest
from test_fakegraph import ServerThread

from services.fakegraph import whatsapp as whatsapp_fake
from services.fakegraph.server import FakeGraph, FakeGraphConfig
from shared.classify import Decision
from shared.messages import Personalised, RenderError
from shared.provider import MessengerClient, SendResult
from shared.providers import JobFields, provider_for, whatsapp
from shared.providers.whatsapp import PROVIDER, WhatsAppRequest, request_path, wamid
from shared.providers.whatsapp_message import decode as decode_message

NUMBER = "106540352242922"
VERSION = "v21.0"
TO = "447700900001"
TEMPLATE = (
    b'{"template":{"name":"order_update","language":{"code":"en_US"},"components":'
    b'[{"type":"body","parameters":[{"type":"text","text":"{{name}}"}]}]}}'
)


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    thread = ServerThread()
    thread.start()
    yield thread
    thread.stop()


@pytest.fixture
def fake(server: ServerThread) -> FakeGraph:
    with httpx.Client(base_url=f"http://127.0.0.1:{server.port}") as http:
        defaults = msgspec.to_builtins(FakeGraphConfig())
        assert http.post("/_fake/config", json=defaults).status_code == 200
        assert http.post("/_fake/reset").status_code == 200
    return server.fake


def send(
    server: ServerThread, to: str = TO, *, timeout_s: float = 5.0, body: bytes | None = None
) -> tuple[SendResult, Decision]:
    """One WhatsApp template send through fanout's client, and its verdict."""
    request = WhatsAppRequest("0-job", decode_message(TEMPLATE), personal=True)
    if body is None:
        built = request.body(to, {"name": "Ann"})
        assert isinstance(built, bytes)
        body = request.tagged(built, 3)

    async def go() -> SendResult:
        client = MessengerClient(f"http://127.0.0.1:{server.port}", VERSION, 2, timeout_s)
        try:
            head = client.pool.frame_post(
                request_path(VERSION, NUMBER), b"Authorization: Bearer wa-token\r\n"
            )
            return await client.send(head, body)
        finally:
            await client.close()

    result = asyncio.run(go())
    return result, PROVIDER.classify(result)


# ---- success and the body ----


def test_a_template_send_is_sent_and_its_body_is_metas(
    fake: FakeGraph, server: ServerThread
) -> None:
    result, decision = send(server)
    assert result.status == 200
    assert decision.verdict == "sent"
    body = fake.stats.bodies[TO]
    assert body.startswith(b'{"messaging_product":"whatsapp"')
    assert json.loads(body) == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": TO,
        "type": "template",
        "template": {
            "name": "order_update",
            "language": {"code": "en_US"},
            "components": [{"type": "body", "parameters": [{"type": "text", "text": "Ann"}]}],
        },
        "biz_opaque_callback_data": "fo1:0-job:3",
    }
    sends = fake.whatsapp.stats.sends
    assert [(number, to, kind) for _, number, to, kind in sends] == [(NUMBER, TO, "template")]


def test_wamid_of_a_success_answer() -> None:
    answer = (
        b'{"messaging_product":"whatsapp","contacts":[{"input":"+447700900001",'
        b'"wa_id":"447700900001"}],"messages":[{"id":"wamid.HBgLMTY1MDUwNzY1MjAVAgARGBI5"}]}'
    )
    assert wamid(answer) == "wamid.HBgLMTY1MDUwNzY1MjAVAgARGBI5"
    assert wamid(b'{"error":{"code":131026}}') is None
    assert wamid(b"<html>") is None


def test_a_text_body_and_personalisation_that_breaks_a_limit() -> None:
    message = decode_message(b'{"text":{"body":"Hi {{name}}","preview_url":true}}')
    request = WhatsAppRequest("0-job", message, personal=True)
    body = request.body("447700900001", {"name": "Bo"})
    assert isinstance(body, bytes)
    assert json.loads(request.tagged(body, 12)) == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": "447700900001",
        "type": "text",
        "text": {"body": "Hi Bo", "preview_url": True},
        "biz_opaque_callback_data": "fo1:0-job:12",
    }
    too_long = request.body("447700900001", {"name": "x" * 4096})
    assert isinstance(too_long, Decision)
    assert (too_long.verdict, too_long.code) == ("failed", "text_too_long")


SPLICED = [
    TEMPLATE,
    b'{"text":{"body":"Hi {{name}}, \\"quoted\\" \\u00e9\\n","preview_url":true}}',
    b'{"text":{"body":"{{name}}"}}',
    b'{"template":{"name":"t","language":{"code":"en"},"components":[{"type":"body",'
    b'"parameters":[{"type":"text","text":"Order {{order|n/a}}","parameter_name":"o"}]}]}}',
    # placeholders in a link or a payload: the full fill and check for everyone
    b'{"template":{"name":"t","language":{"code":"en"},"components":[{"type":"header",'
    b'"parameters":[{"type":"image","image":{"link":"https://x.example/{{name}}.png"}}]}]}}',
    b'{"template":{"name":"t","language":{"code":"en"},"components":[{"type":"button",'
    b'"sub_type":"quick_reply","index":"0","parameters":[{"type":"payload","payload":"{{name}}"}]}'
    b',{"type":"body","parameters":[{"type":"text","text":"{{name}}"}]}]}}',
]
VALUES = [
    {"name": "Ann", "order": "A-1"},
    {"name": 'Zoë "Q" \\ </script>\u2028', "order": ""},
    {"name": "x" * 4096},
    {"name": "x" * 40_000},
    {"name": ""},
    {},
]


@pytest.mark.parametrize("raw", SPLICED)
def test_personalised_bodies_are_the_full_fill_byte_for_byte(raw: bytes) -> None:
    """The quick path (segments around text placeholders) sends exactly what the full fill and
    re-check would, and fails the same people with the same error."""
    message = decode_message(raw)
    request = WhatsAppRequest("0-job", message, personal=True)
    full = Personalised(message)
    head = b'{"messaging_product":"whatsapp","recipient_type":"individual","to":"447700900001",'
    for values in VALUES:
        body = request.body("447700900001", values)
        try:
            expected: bytes | Decision = (
                head + b'"type":"%s",' % message.type.encode() + full.render_json(values)[1:]
            )
        except RenderError as exc:
            expected = Decision("failed", exc.code, "", exc.message)
        assert body == expected, values


def test_the_provider_is_the_channels() -> None:
    provider = provider_for("whatsapp")
    assert provider is PROVIDER
    assert provider.path(VERSION, NUMBER) == f"/{VERSION}/{NUMBER}/messages"
    fields = JobFields(NUMBER, decode_message(TEMPLATE), "", None, False, channel="whatsapp")
    request = provider.request("0-job", fields)
    assert not request.has_fallback
    body = request.body(TO, None)
    assert isinstance(body, bytes)
    assert json.loads(body)["template"]["components"][0]["parameters"][0]["text"] == "{{name}}"


# ---- the table: one row per test ----

# code -> (verdict, suppress, pace_person), as the module docstring's table says
ROWS: dict[int, tuple[str, bool, bool]] = {
    130429: ("throttled", False, False),
    80007: ("throttled", False, False),
    4: ("throttled", False, False),
    131056: ("retry", False, True),
    131048: ("restricted", False, False),
    368: ("restricted", False, False),
    131026: ("failed", True, False),
    131050: ("failed", True, False),
    131047: ("failed", False, False),
    131049: ("failed", False, False),
    132000: ("fatal", False, False),
    132001: ("fatal", False, False),
    132012: ("fatal", False, False),
    132015: ("fatal", False, False),
    132016: ("fatal", False, False),
    131000: ("retry", False, False),
    131016: ("retry", False, False),
    131031: ("restricted", False, False),
    131042: ("restricted", False, False),
    131005: ("fatal", False, False),
    131045: ("fatal", False, False),
    133010: ("fatal", False, False),
}


def test_every_code_of_the_table_has_its_row() -> None:
    """The module's code sets and the rows tested here say the same thing (190 and 2 have
    rows of their own below; code 1 is Graph's unknown error, retried like 2)."""
    listed = (
        whatsapp.THROTTLE_CODES
        | whatsapp.PAUSE_CODES
        | whatsapp.FATAL_CODES
        | whatsapp.SUPPRESS_CODES
        | whatsapp.FAILED_CODES
        | whatsapp.TRANSIENT_CODES
        | {whatsapp.PAIR_CODE}
    )
    assert listed - {190, 1, 2} == set(ROWS)
    assert {c for c, (verdict, suppress, _) in ROWS.items() if suppress} == whatsapp.SUPPRESS_CODES


@pytest.mark.parametrize("code", list(ROWS))
def test_row(fake: FakeGraph, server: ServerThread, code: int) -> None:
    verdict, suppress, pace_person = ROWS[code]
    fake.configure(wa_errors={TO: code})
    result, decision = send(server)
    assert result.answer is not None and result.answer.error is not None
    assert result.answer.error.code == code
    assert (decision.verdict, decision.code, decision.suppress, decision.pace_person) == (
        verdict,
        str(code),
        suppress,
        pace_person,
    )
    assert decision.message.startswith(f"(#{code}) ")
    error = json.loads(whatsapp_fake.INJECTABLE[code].body(b"x"))["error"]
    details = error.get("error_data", {}).get("details")
    expected = error["message"] if details is None else f"{error['message']}: {details}"
    assert decision.message == expected
    assert fake.whatsapp.stats.sends == []  # refused: nothing reached the person


def test_row_pair_limit_waits_at_least_the_interval(fake: FakeGraph, server: ServerThread) -> None:
    assert send(server)[1].verdict == "sent"
    _, decision = send(server)  # the same person at once: the fake's real pair limit
    assert decision.verdict == "retry"
    assert decision.pace_person
    assert decision.retry_after is not None and decision.retry_after >= 6.0
    assert fake.whatsapp.stats.pair_violations == 1


@pytest.mark.parametrize("knob", [{"revoked": True}, {"tokens": {"another": NUMBER}}])
def test_row_190_token_stops_the_job(
    fake: FakeGraph, server: ServerThread, knob: dict[str, Any]
) -> None:
    fake.configure(**knob)
    _, decision = send(server)
    assert (decision.verdict, decision.code) == ("fatal", "190")


def test_row_transient_code_2_in_an_outage(fake: FakeGraph, server: ServerThread) -> None:
    fake.configure(outage_until=4_000_000_000.0)
    result, decision = send(server)
    assert result.status == 503
    assert (decision.verdict, decision.code) == ("retry", "2")


@pytest.mark.parametrize(
    ("change", "code"),
    [(b'"to":"447700900001"', 131009), (b'"messaging_product":"whatsapp"', 100)],
)
def test_row_anything_else_fails_with_the_code(
    fake: FakeGraph, server: ServerThread, change: bytes, code: int
) -> None:
    """A bad body (Meta's 100 / 131009) fails the person with the provider's code."""
    good = WhatsAppRequest("0-job", decode_message(TEMPLATE)).body(TO, None)
    assert isinstance(good, bytes)
    spoilt = {
        131009: b'"to":"not-a-number"',
        100: b'"messaging_product":"carrier_pigeon"',
    }[code]
    fake.configure(wa_numbers=[NUMBER])
    _, decision = send(server, body=good.replace(change, spoilt))
    assert (decision.verdict, decision.code, decision.suppress) == ("failed", str(code), False)


def test_row_html_502_after_acceptance_is_retried(fake: FakeGraph, server: ServerThread) -> None:
    fake.configure(html_502_rate=1.0)
    result, decision = send(server)
    assert (result.status, result.answer) == (502, None)
    assert decision.verdict == "retry"
    assert result.maybe_delivered  # the fake had accepted it: a resend is counted in doubt


def test_row_timeout_is_retried(fake: FakeGraph, server: ServerThread) -> None:
    fake.configure(hang_rate=1.0)
    result, decision = send(server, timeout_s=0.3)
    assert result.status == 0
    assert (decision.verdict, decision.code) == ("retry", "timeout")
