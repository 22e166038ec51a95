"""The submit side of a WhatsApp job: its settings, the rules a job must pass (each 422 with its
exact error, nothing written), numbers bound to tenants, E.164 recipients (a leading + dropped,
deduplicated after that, the bad row named), the job view, POST /v1/checks, and the messaging
tier checked at submit (refused with how many can go now, or accepted with "tier": "spread")."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any, cast

import jsonschema
import msgspec
import pytest
import redis
import redis.asyncio as aioredis
from conftest import API_TOKENS, OTHER_PAGE, PAGE, RedisServer
from starlette.testclient import TestClient

from services.producer.app import create_app
from shared import keys, logs, window
from shared.models import Chunk
from shared.settings import SettingsError, consumer_settings, producer_settings

AUTH = {"Authorization": f"Bearer {API_TOKENS['acme']}"}
OTHER = {"Authorization": f"Bearer {API_TOKENS['other']}"}
NUMBER = "106540352242922"  # acme's, in portfolio "brand" with SISTER
SISTER = "106540352242933"  # acme's, shares brand's tier
LONE = "106540352242944"  # acme's, a portfolio of its own, unlimited
OTHER_NUMBER = "206540352242955"  # tenant other's
WA_TOKEN = "EAAwanumbertoken0123456789secret"
DAY_MS = 24 * 3600 * 1000

TEMPLATE = {
    "template": {
        "name": "order_update",
        "language": {"code": "en_US"},
        "components": [
            {"type": "body", "parameters": [{"type": "text", "text": "{{name|friend}}"}]}
        ],
    }
}


def settings_env(redis_server: RedisServer, **extra: str) -> dict[str, str]:
    return {
        "FANOUT_REDIS_URL": redis_server.url,
        "FANOUT_API_TOKENS": ",".join(f"{t}={tok}" for t, tok in API_TOKENS.items()),
        "FANOUT_PAGE_TOKENS": f"{PAGE}=EAAsecret,{OTHER_PAGE}=EAAother",
        "FANOUT_WA_NUMBERS": ",".join(
            f"{n}={WA_TOKEN}{i}" for i, n in enumerate((NUMBER, SISTER, LONE, OTHER_NUMBER))
        ),
        "FANOUT_TENANT_PAGES": (
            f"acme={PAGE}|{NUMBER}|{SISTER}|{LONE},other={OTHER_PAGE}|{OTHER_NUMBER}"
        ),
        "FANOUT_WA_PORTFOLIOS": f"brand={NUMBER}|{SISTER}",
        "FANOUT_WA_TIERS": f"{LONE}=unlimited",  # brand: the default, 250
        "FANOUT_SHARDS": "2",
        "FANOUT_CHUNK_SIZE": "10",
        **extra,
    }


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[TestClient]:
    with TestClient(create_app(producer_settings(settings_env(redis_server)))) as c:
        yield c


def wa_job(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "channel": "whatsapp",
        "phone_number_id": NUMBER,
        "message": TEMPLATE,
        "recipients": ["+15551234567", "15551234567", "447700900123"],
    }
    body.update(overrides)
    return body


def upload(client: TestClient, spec: Any, csv_text: str) -> Any:
    files = {
        "spec": (None, json.dumps(spec)),
        "recipients": ("contacts.csv", csv_text.encode(), "text/csv"),
    }
    return client.post("/v1/jobs", files=files, headers=AUTH)


def chunk_ids(r: redis.Redis, job_id: str) -> list[str]:
    k = keys.JobKeys.of(job_id)
    entries = cast(list[tuple[bytes, dict[bytes, bytes]]], r.xrange(k.work))
    chunks = [msgspec.msgpack.decode(f[b"c"], type=Chunk) for _, f in entries]
    return [i for c in chunks if c.job == job_id for i in c.ids]


# ---- settings ----


def test_settings_parse_bind_and_mask() -> None:
    env = {
        "FANOUT_API_TOKENS": "acme=t",
        "FANOUT_WA_NUMBERS": f"{NUMBER}={WA_TOKEN},{LONE}=x",
        "FANOUT_WA_RATE_LIMITS": f"{NUMBER}=1000",
        "FANOUT_WA_PORTFOLIOS": f"brand={NUMBER}",
        "FANOUT_WA_TIERS": "brand=10000",
        "FANOUT_WA_PAIR_INTERVAL_S": "6.5",
    }
    producer = producer_settings(env)
    assert producer.page_ids == frozenset()  # a WhatsApp-only deployment needs no page tokens
    assert producer.tenant_pages == {"acme": frozenset({NUMBER, LONE})}  # a lone tenant
    assert (producer.tier_for(NUMBER), producer.tier_for(LONE)) == (10_000, 250)
    assert (producer.portfolio_of(NUMBER), producer.portfolio_of(LONE)) == ("brand", LONE)
    consumer = consumer_settings(env)
    assert (consumer.wa_rate_for(NUMBER), consumer.wa_rate_for(LONE)) == (1000, 80)
    assert consumer.wa_pair_interval_s == 6.5
    shown = json.dumps(logs.effective_settings(producer))
    assert WA_TOKEN not in shown and '"wa_tokens": {"' in shown


@pytest.mark.parametrize(
    ("extra", "error"),
    [
        ({"FANOUT_WA_NUMBERS": "+1555=t"}, "FANOUT_WA_NUMBERS: '+1555' is not a phone_number_id"),
        ({"FANOUT_WA_RATE_LIMIT": "1001"}, "FANOUT_WA_RATE_LIMIT=1001 is out of range [0, 1000]"),
        (
            {"FANOUT_WA_RATE_LIMITS": "7=fast"},
            "FANOUT_WA_RATE_LIMITS: the rate for number 7 is not a whole number",
        ),
        (
            {"FANOUT_WA_TIERS": "brand=300"},
            "FANOUT_WA_TIERS: brand='300' is not 250, 2000, 10000, 100000 or unlimited",
        ),
        (
            {"FANOUT_WA_TIER_DEFAULT": "1k"},
            "FANOUT_WA_TIER_DEFAULT='1k' is not 250, 2000, 10000, 100000 or unlimited",
        ),
        ({"FANOUT_WA_PAIR_INTERVAL_S": "soon"}, "FANOUT_WA_PAIR_INTERVAL_S='soon' is not a number"),
        (
            {"FANOUT_WA_PORTFOLIOS": "a=1,b=1"},
            "FANOUT_WA_PORTFOLIOS: number 1 is in both 'a' and 'b'",
        ),
        (
            {"FANOUT_WA_PORTFOLIOS": "brand=2", "FANOUT_WA_TIERS": "2=2000"},
            "FANOUT_WA_TIERS: number 2 is in portfolio 'brand' (FANOUT_WA_PORTFOLIOS): set the"
            " portfolio's tier, which all its numbers share",
        ),
        (
            {"FANOUT_TENANT_PAGES": "acme=1|999"},
            "FANOUT_TENANT_PAGES: 999 has no token in FANOUT_PAGE_TOKENS or FANOUT_WA_NUMBERS",
        ),
    ],
)
def test_settings_errors_name_the_variable(extra: dict[str, str], error: str) -> None:
    env = {"FANOUT_API_TOKENS": "acme=t", "FANOUT_PAGE_TOKENS": "1=p", "FANOUT_WA_NUMBERS": "2=w"}
    with pytest.raises(SettingsError) as raised:
        producer_settings({**env, **extra})
    assert str(raised.value).startswith(error), raised.value


# ---- JSON jobs ----


def test_template_job_is_stored_with_its_number_and_digits(
    client: TestClient, r: redis.Redis
) -> None:
    answer = client.post("/v1/jobs", json=wa_job(), headers=AUTH)
    assert answer.status_code == 202, answer.text
    accepted = answer.json()
    assert (accepted["total"], accepted["duplicates_removed"]) == (2, 1)  # +1555… = 1555…
    job_id = accepted["job_id"]
    assert chunk_ids(r, job_id) == ["15551234567", "447700900123"]
    h = r.hgetall(keys.JobKeys.of(job_id).hash)
    assert h[b"channel"] == b"whatsapp" and h[b"page_id"] == NUMBER.encode()
    assert h[b"messaging_type"] == b"" and h[b"kind"] == b"whatsapp_template"
    stored = json.loads(h[b"message"])  # filled with the defaults: a JSON job has no columns
    assert stored["template"]["components"][0]["parameters"][0]["text"] == "friend"
    view = client.get(f"/v1/jobs/{job_id}", headers=AUTH).json()
    assert (view["channel"], view["phone_number_id"], view["page_id"]) == (
        "whatsapp",
        NUMBER,
        NUMBER,
    )
    assert view["message_kind"] == "whatsapp_template" and view["tier"] == "refuse"
    listed = client.get("/v1/jobs", headers=AUTH).json()["items"]
    assert [j["channel"] for j in listed] == ["whatsapp"]
    # A Messenger job (channel given or not) says so in its view, and has no number.
    messenger = {"channel": "messenger", "page_id": PAGE, "message": {"text": "Hi"}}
    messenger["messaging_type"] = "UPDATE"
    sent = client.post("/v1/jobs", json={**messenger, "recipients": ["1"]}, headers=AUTH)
    view = client.get(sent.json()["status_url"], headers=AUTH).json()
    assert (view["channel"], view["phone_number_id"], view["tier"]) == ("messenger", None, None)


NUMBER_NAMED = 'phone_number_id names a WhatsApp number: add "channel": "whatsapp"'
REFUSALS = [
    # (body, status, code, field, exact message)
    (
        wa_job(messaging_type="UPDATE"),
        422,
        "invalid_field",
        "messaging_type",
        "a WhatsApp job has no messaging_type: a template reaches people outside the 24-hour"
        " service window, a text only those inside it",
    ),
    (
        wa_job(tag="CUSTOMER_FEEDBACK"),
        422,
        "invalid_field",
        "tag",
        "a WhatsApp job has no tag: outside the 24-hour service window send an approved"
        " template (message.template)",
    ),
    (
        wa_job(page_id=PAGE),
        422,
        "invalid_field",
        "page_id",
        "a WhatsApp job names its number in phone_number_id, not page_id",
    ),
    (
        wa_job(window="require"),
        422,
        "invalid_field",
        "window",
        "a WhatsApp job has no window rule: a text to someone outside the 24-hour service"
        " window fails with 131047; a template reaches them",
    ),
    (
        wa_job(fallback=TEMPLATE),
        422,
        "invalid_field",
        "fallback",
        "a WhatsApp job has no fallback: send a template (message.template), which reaches"
        " people outside the 24-hour service window",
    ),
    (
        {k: v for k, v in wa_job().items() if k != "phone_number_id"},
        422,
        "invalid_field",
        "phone_number_id",
        "Object missing required field `phone_number_id`",
    ),
    (
        {
            "page_id": PAGE,
            "phone_number_id": NUMBER,
            "message": {"text": "Hi"},
            "messaging_type": "UPDATE",
            "recipients": ["1"],
        },
        422,
        "invalid_field",
        "phone_number_id",
        NUMBER_NAMED + " (a Messenger job names its page in page_id)",
    ),
    (
        wa_job(channel="sms"),
        422,
        "invalid_field",
        "channel",
        "Invalid enum value 'sms' - at `$.channel`",
    ),
    (
        wa_job(message={"text": "Hi"}),
        422,
        "invalid_field",
        "message.text",
        "Expected `object | null`, got `str` - at `$.message.text`",
    ),
    (
        wa_job(message={"text": {"body": "x" * 4097}}),
        422,
        "invalid_field",
        "message.text.body",
        "Expected `str` of length <= 4096 - at `$.message.text.body`",
    ),
    (
        wa_job(message={"template": {"name": "Order", "language": {"code": "en"}}}),
        422,
        "invalid_field",
        "message.template.name",
        "Expected `str` matching regex '^[a-z0-9_]{1,512}$' - at `$.message.template.name`",
    ),
    (
        wa_job(message={"text": {"body": "Hi"}, "template": TEMPLATE["template"]}),
        422,
        "invalid_field",
        "message",
        "give exactly one of `text` or `template` - at `$.message`",
    ),
    (
        wa_job(message={"text": {"body": "Hi {{name}}"}}),
        422,
        "unfillable_placeholder",
        "message.text.body",
        "{{name}} has no value: upload the recipients as CSV with a name column, or give a"
        " default as {{name|...}}",
    ),
    (
        wa_job(recipients=["15551234567", "1555-123"]),
        422,
        "invalid_field",
        "recipients[1]",
        "'1555-123' is not a phone number in E.164: 8 to 15 digits, a leading + allowed",
    ),
    (
        wa_job(recipients=["+1234567"]),  # 7 digits
        422,
        "invalid_field",
        "recipients[0]",
        "'+1234567' is not a phone number in E.164: 8 to 15 digits, a leading + allowed",
    ),
    (
        wa_job(test_recipients=["15551234567"]),
        422,
        "invalid_field",
        "test_recipients",
        "test sends (test_recipients) are for Messenger jobs for now",
    ),
    (
        wa_job(phone_number_id=OTHER_NUMBER),
        403,
        "number_forbidden",
        "phone_number_id",
        f"number {OTHER_NUMBER} is not one of this tenant's numbers (FANOUT_TENANT_PAGES)",
    ),
    (
        wa_job(phone_number_id="999999"),  # configured for nobody: the same answer
        403,
        "number_forbidden",
        "phone_number_id",
        "number 999999 is not one of this tenant's numbers (FANOUT_TENANT_PAGES)",
    ),
]


@pytest.mark.parametrize(("body", "status", "code", "field", "message"), REFUSALS)
def test_each_refusal_names_its_field_and_writes_nothing(
    client: TestClient,
    r: redis.Redis,
    body: dict[str, Any],
    status: int,
    code: str,
    field: str,
    message: str,
) -> None:
    before = set(r.keys("*"))
    answer = client.post("/v1/jobs", json=body, headers=AUTH)
    assert answer.status_code == status, answer.text
    assert answer.json() == {"error": {"code": code, "message": message, "field": field}}
    assert set(r.keys("*")) == before


def test_a_page_is_not_a_number_and_tenants_stay_apart(client: TestClient) -> None:
    assert client.get("/v1/pages", headers=AUTH).json() == {
        "items": [{"page_id": PAGE}],
        "numbers": [{"phone_number_id": n} for n in (NUMBER, SISTER, LONE)],
    }
    as_page = {"page_id": NUMBER, "message": {"text": "Hi"}, "messaging_type": "UPDATE"}
    refused = client.post("/v1/jobs", json={**as_page, "recipients": ["1"]}, headers=AUTH)
    assert refused.json()["error"] == {
        "code": "unknown_page",
        "message": f"page {NUMBER} has no configured page token",
        "field": "page_id",
    }
    # acme's page named as a number: bound to acme, but it has no WhatsApp token.
    as_number = client.post("/v1/jobs", json=wa_job(phone_number_id=PAGE), headers=AUTH)
    assert as_number.status_code == 422, as_number.text
    assert as_number.json()["error"]["code"] == "unknown_number"
    mine = client.post("/v1/jobs", json=wa_job(phone_number_id=OTHER_NUMBER), headers=OTHER)
    assert mine.status_code == 202, mine.text
    job_url = mine.json()["status_url"]
    assert client.get(job_url, headers=AUTH).status_code == 404  # other's job, unseen by acme
    assert client.get(job_url, headers=OTHER).json()["phone_number_id"] == OTHER_NUMBER


# ---- CSV uploads ----


def test_csv_upload_normalises_and_names_the_bad_row(client: TestClient, r: redis.Redis) -> None:
    spec = {k: v for k, v in wa_job().items() if k != "recipients"}
    spec["message"] = {
        "template": {
            "name": "order_update",
            "language": {"code": "en"},
            "components": [{"type": "body", "parameters": [{"type": "text", "text": "{{name}}"}]}],
        }
    }
    answer = upload(client, spec, "id,name\n+15551234567,Ann\n15551234567,Ann\n447700900123,Bo\n")
    assert answer.status_code == 202, answer.text
    assert (answer.json()["total"], answer.json()["duplicates_removed"]) == (2, 1)
    job_id = answer.json()["job_id"]
    assert chunk_ids(r, job_id) == ["15551234567", "447700900123"]
    assert r.hget(keys.JobKeys.of(job_id).hash, "personal") == b"1"
    before = set(r.keys("*"))
    bad = upload(client, spec, "id,name\n15551234567,Ann\n\n447700900123,Bo\n4477-009,Cy\n")
    assert bad.status_code == 422, bad.text
    assert bad.json()["error"] == {
        "code": "invalid_csv",
        "message": "row 3 (line 5), column id: '4477-009' is not a phone number in E.164:"
        " 8 to 15 digits, a leading + allowed",
        "field": "recipients",
    }
    missing = upload(client, spec, "id\n15551234567\n")
    assert missing.status_code == 422
    assert missing.json()["error"]["field"] == "message.template.components[0].parameters[0].text"
    wrong = upload(client, {**spec, "messaging_type": "UPDATE"}, "id\n15551234567\n")
    assert wrong.json()["error"]["field"] == "spec.messaging_type", wrong.text
    assert set(r.keys("*")) == before  # nothing left behind


# ---- the messaging tier ----


def seed_tier(redis_server: RedisServer, now_ms: int, reached: int, people: list[str]) -> None:
    """``reached`` people in brand's reach in the last 24 h: people[:10] an hour ago, the
    others one a minute from 24 h ago on (plus some older than 24 h, which count no more);
    people[10:15] inside their service window with NUMBER."""
    r = redis_server.client
    key = keys.wa_reached("brand")
    others = reached - 10
    r.zadd(key, {f"9{i:010d}": now_ms - DAY_MS + 60_000 * (i + 1) for i in range(others)})
    r.zadd(key, {f"8{i:010d}": now_ms - DAY_MS - 60_000 for i in range(30)})  # aged out
    r.zadd(key, dict.fromkeys(people[:10], now_ms - 3600_000))

    async def touch() -> None:
        client = aioredis.from_url(redis_server.url)
        for person in people[10:15]:
            await window.touch(client, NUMBER, person, now_ms - 3600_000)
        await client.aclose()

    asyncio.run(touch())


def test_tier_refuses_naming_what_can_go_now_or_spreads(
    client: TestClient, redis_server: RedisServer, r: redis.Redis
) -> None:
    now_ms = int(time.time() * 1000)
    people = [f"4477009{i:05d}" for i in range(100)]
    seed_tier(redis_server, now_ms, 200, people)  # 250 - 200: 50 left; 85 would count
    before = set(r.keys("*"))
    answer = client.post("/v1/jobs", json=wa_job(recipients=people), headers=AUTH)
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    # 35 more than fit: room for them once the 35th oldest of the 200 is 24 h old, 35 min on
    room = r.zrangebyscore(keys.wa_reached("brand"), now_ms - DAY_MS, "+inf", 34, 1, True)
    room_ms = int(room[0][1]) + DAY_MS
    assert room_ms == now_ms + 35 * 60_000
    room_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(room_ms // 1000))
    assert error == {
        "code": "tier_exceeded",
        "message": "this template would reach 85 people outside a service window not reached"
        " in the last 24 h; portfolio brand's messaging tier is 250 people per moving 24 h and"
        f" 50 are left, so 50 can be sent now; room for all of them returns at {room_at}."
        ' Send with "tier": "spread" to send as room returns',
        "field": "recipients",
        "can_send_now": 50,
        "tier": 250,
        "portfolio": "brand",
        "reached_24h": 200,
        "would_count": 85,
        "room_at": room_at,
    }
    assert set(r.keys("*")) == before
    # The sister number shares brand's tier; a job within what is left goes.
    fits = client.post(
        "/v1/jobs", json=wa_job(phone_number_id=SISTER, recipients=people[:50]), headers=AUTH
    )
    assert fits.status_code == 202, fits.text
    # Spread: accepted, dispatch paces it (services/consumer).
    spread = client.post("/v1/jobs", json=wa_job(recipients=people, tier="spread"), headers=AUTH)
    assert spread.status_code == 202, spread.text
    assert client.get(spread.json()["status_url"], headers=AUTH).json()["tier"] == "spread"
    # A text reaches only people inside their window: no tier. An unlimited portfolio: none.
    text = wa_job(recipients=people, message={"text": {"body": "Hi"}})
    assert client.post("/v1/jobs", json=text, headers=AUTH).status_code == 202
    unlimited = wa_job(phone_number_id=LONE, recipients=people)
    assert client.post("/v1/jobs", json=unlimited, headers=AUTH).status_code == 202


def test_a_scheduled_job_is_weighed_at_its_send_at(
    client: TestClient, redis_server: RedisServer
) -> None:
    now_ms = int(time.time() * 1000)
    people = [f"4477009{i:05d}" for i in range(100)]
    seed_tier(redis_server, now_ms, 200, people)  # now: 50 left, 85 would count
    assert client.post("/v1/jobs", json=wa_job(recipients=people), headers=AUTH).status_code == 422
    # In 2 h, the 119 oldest reaches are over 24 h old: 81 reached, 169 left; the 10 reached
    # and the 5 inside their window an hour ago still do not count.
    later = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now_ms / 1000 + 7200))
    scheduled = client.post("/v1/jobs", json=wa_job(recipients=people, send_at=later), headers=AUTH)
    assert scheduled.status_code == 202, scheduled.text
    assert scheduled.json()["status"] == "scheduled"
    # 36 h ahead: every reach and window has aged out, all 100 count, 250 left.
    much_later = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now_ms / 1000 + 36 * 3600))
    many = [f"4478009{i:05d}" for i in range(260)]
    refused = client.post(
        "/v1/jobs", json=wa_job(recipients=many, send_at=much_later), headers=AUTH
    )
    assert refused.status_code == 422, refused.text
    error = refused.json()["error"]
    assert (error["can_send_now"], error["reached_24h"], error["would_count"]) == (250, 0, 260)
    assert "250 can be sent at send_at" in error["message"]


def test_a_job_larger_than_the_whole_tier_never_fits(client: TestClient) -> None:
    people = [f"4477009{i:05d}" for i in range(2500)]  # counting stops after 2,000 of them
    answer = client.post("/v1/jobs", json=wa_job(recipients=people), headers=AUTH)
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert (error["can_send_now"], error["tier"], error["room_at"]) == (250, 250, None)
    assert error["would_count"] is None  # counting stopped past the tier
    assert "more than 250 people" in error["message"]
    assert "the job is larger than the whole tier" in error["message"]
    csv_text = "id\n" + "\n".join(people) + "\n"
    spec = {k: v for k, v in wa_job().items() if k != "recipients"}
    refused = upload(client, spec, csv_text)
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "tier_exceeded"
    spread = upload(client, {**spec, "tier": "spread"}, csv_text)
    assert spread.status_code == 202, spread.text
    assert spread.json()["total"] == 2500


def test_checks_count_against_the_tier(
    client: TestClient, redis_server: RedisServer, r: redis.Redis
) -> None:
    now_ms = int(time.time() * 1000)
    people = [f"4477009{i:05d}" for i in range(100)]
    seed_tier(redis_server, now_ms, 200, people)
    suppressed = client.post(
        f"/v1/pages/{NUMBER}/suppressions", json={"recipients": people[95:]}, headers=AUTH
    )
    assert suppressed.status_code == 200, suppressed.text
    before = set(r.keys("*"))
    body = wa_job(recipients=["+" + p for p in people])
    answer = client.post("/v1/checks", json=body, headers=AUTH)
    assert answer.status_code == 200, answer.text
    data = answer.json()
    assert data["channel"] == "whatsapp"
    assert (data["checked"], data["outside_window"], data["suppressed"]) == (100, 95, 5)
    assert (data["tier"], data["tier_left"], data["would_count"]) == (250, 50, 85)
    assert any("tier_exceeded" in note for note in data["notes"])
    text = client.post(
        "/v1/checks", json={**body, "message": {"text": {"body": "Hi"}}}, headers=AUTH
    ).json()
    assert "tier" not in text and any("131047" in note for note in text["notes"])
    messenger = {"page_id": PAGE, "message": {"text": "Hi"}, "messaging_type": "UPDATE"}
    plain = client.post("/v1/checks", json={**messenger, "recipients": ["1"]}, headers=AUTH)
    assert "channel" not in plain.json()  # Messenger's answer is as it was
    assert set(r.keys("*")) == before


# ---- the contract ----


def test_openapi_documents_the_whatsapp_job_and_its_answers(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    schemas = doc["components"]["schemas"]
    job = schemas["WhatsAppJobRequest"]
    assert set(job["required"]) == {"channel", "phone_number_id", "message", "recipients"}
    assert job["properties"]["tier"]["enum"] == ["refuse", "spread"]
    assert "page_id" not in job["properties"] and "messaging_type" not in job["properties"]
    assert {"channel", "phone_number_id", "tier"} <= set(schemas["JobView"]["properties"])
    assert {"tier", "tier_left", "would_count"} <= set(schemas["CheckAnswer"]["properties"])

    def check(path: str, status: int, body: Any) -> None:
        answer = doc["paths"][path]["post"]
        content = answer["responses"][str(status)]["content"]["application/json"]["schema"]
        validator = jsonschema.Draft202012Validator({**content, "components": doc["components"]})
        validator.validate(body)

    request = {"requestBody": doc["paths"]["/v1/jobs"]["post"]["requestBody"]}
    body_schema = request["requestBody"]["content"]["application/json"]["schema"]
    jsonschema.Draft202012Validator({**body_schema, "components": doc["components"]}).validate(
        wa_job()
    )
    accepted = client.post("/v1/jobs", json=wa_job(), headers=AUTH)
    check("/v1/jobs", 202, accepted.json())
    people = [f"4477009{i:05d}" for i in range(300)]
    refused = client.post("/v1/jobs", json=wa_job(recipients=people), headers=AUTH)
    assert refused.json()["error"]["code"] == "tier_exceeded"
    check("/v1/jobs", 422, refused.json())
    tier_schema = {"$ref": "#/components/schemas/TierExceededResponse"}
    jsonschema.Draft202012Validator({**tier_schema, "components": doc["components"]}).validate(
        refused.json()
    )
    checked = client.post("/v1/checks", json=wa_job(), headers=AUTH)
    check("/v1/checks", 200, checked.json())


def test_window_inside_agrees_with_last_interactions(redis_server: RedisServer) -> None:
    """shared.window.inside (one script call for a batch) answers as last_interactions does,
    also once the number has moved up a tier of buckets (past 4,096 people)."""
    now_s = time.time()
    people = [f"4477{i:08d}" for i in range(5000)]

    async def run() -> tuple[list[bool], list[bool], int]:
        client = aioredis.from_url(redis_server.url)
        for i, person in enumerate(people[:4500]):
            ago = 25 * 3600 if i % 3 == 0 else 3600  # a third wrote over 24 h ago
            await window.touch(client, NUMBER, person, int((now_s - ago) * 1000))
        tier = int(await client.hget(keys.window_heard(NUMBER), "tier") or 1)
        inside = await window.inside(client, NUMBER, people, now_s)
        lasts = await window.last_interactions(client, NUMBER, people)
        await client.aclose()
        return inside, [window.in_window(last, now_s) for last in lasts], tier

    inside, expected, tier = asyncio.run(run())
    assert tier >= 2  # the buckets grew a tier: the older tier's entries are read too
    assert inside == expected
    assert inside.count(True) == 3000  # two thirds of the 4,500 who wrote; none of the rest
