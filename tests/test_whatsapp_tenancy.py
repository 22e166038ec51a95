"""Tenants stay apart on WhatsApp as on Messenger (issue 17: numbers are bound in
FANOUT_TENANT_PAGES like pages): a tenant cannot submit on, check, read the people or the
suppression list of, or see, pause, resume or cancel the jobs of another tenant's number, and
a refusal writes nothing. The number's owner can do each of these (so the refusals are about the
tenant, not a route that refuses everyone)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
from conftest import API_TOKENS, OTHER_PAGE, PAGE, RedisServer
from starlette.testclient import TestClient

from services.producer.app import create_app
from shared.settings import producer_settings

ACME = {"Authorization": f"Bearer {API_TOKENS['acme']}"}
OTHER = {"Authorization": f"Bearer {API_TOKENS['other']}"}
NUMBER = "106540352242922"  # acme's
OTHER_NUMBER = "206540352242955"  # other's
PERSON = "15551234567"
FORBIDDEN = {
    "code": "page_forbidden",
    "message": f"page {NUMBER} is not one of this tenant's pages (FANOUT_TENANT_PAGES)",
    "field": "page_id",
}


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[TestClient]:
    env = {
        "FANOUT_REDIS_URL": redis_server.url,
        "FANOUT_API_TOKENS": ",".join(f"{t}={tok}" for t, tok in API_TOKENS.items()),
        "FANOUT_PAGE_TOKENS": f"{PAGE}=EAAsecret,{OTHER_PAGE}=EAAother",
        "FANOUT_WA_NUMBERS": f"{NUMBER}=EAAwatokenacme0123456789,{OTHER_NUMBER}=EAAwatokenoth012",
        "FANOUT_TENANT_PAGES": f"acme={PAGE}|{NUMBER},other={OTHER_PAGE}|{OTHER_NUMBER}",
        "FANOUT_WA_TIERS": f"{NUMBER}=unlimited,{OTHER_NUMBER}=unlimited",
        "FANOUT_SHARDS": "2",
    }
    with TestClient(create_app(producer_settings(env))) as c:
        yield c


def wa_job(number: str = NUMBER) -> dict[str, Any]:
    return {
        "channel": "whatsapp",
        "phone_number_id": number,
        "message": {"template": {"name": "order_update", "language": {"code": "en_US"}}},
        "recipients": [f"+{PERSON}", "447700900123"],
    }


def test_another_tenants_number_is_out_of_reach(client: TestClient, r: redis.Redis) -> None:
    ours = client.post("/v1/jobs", json=wa_job(), headers=ACME)
    assert ours.status_code == 202, ours.text
    job_id = ours.json()["job_id"]
    before = {key: r.type(key) for key in r.keys("*")}

    refused = client.post("/v1/jobs", json=wa_job(), headers=OTHER)
    assert refused.status_code == 403, refused.text
    assert refused.json()["error"]["code"] == "number_forbidden"
    checked = client.post("/v1/checks", json=wa_job(), headers=OTHER)
    assert checked.status_code == 403, checked.text
    assert checked.json()["error"]["field"] == "phone_number_id"
    suppressions = f"/v1/pages/{NUMBER}/suppressions"
    for answer in (
        client.get(suppressions, headers=OTHER),
        client.post(suppressions, json={"recipients": [PERSON]}, headers=OTHER),
        client.delete(f"{suppressions}/{PERSON}", headers=OTHER),
        client.get(f"/v1/pages/{NUMBER}/people/{PERSON}", headers=OTHER),
    ):
        assert (answer.status_code, answer.json()["error"]) == (403, FORBIDDEN), answer.text
    for path in ("", "/errors", "/series"):
        assert client.get(f"/v1/jobs/{job_id}{path}", headers=OTHER).status_code == 404, path
    for action in ("pause", "resume", "cancel"):
        answer = client.post(f"/v1/jobs/{job_id}/{action}", headers=OTHER)
        assert answer.status_code == 404, (action, answer.text)
    assert client.get("/v1/jobs", headers=OTHER).json()["items"] == []
    numbers = client.get("/v1/pages", headers=OTHER).json().get("numbers")
    assert numbers == [{"phone_number_id": OTHER_NUMBER}]
    assert {key: r.type(key) for key in r.keys("*")} == before  # the refusals wrote nothing

    # The owner can do each of these.
    assert client.post("/v1/checks", json=wa_job(), headers=ACME).status_code == 200
    added = client.post(suppressions, json={"recipients": [PERSON]}, headers=ACME)
    assert added.status_code == 200, added.text
    listed = client.get(suppressions, headers=ACME).json()["items"]
    assert [item["psid"] for item in listed] == [PERSON]
    person = client.get(f"/v1/pages/{NUMBER}/people/{PERSON}", headers=ACME)
    assert person.status_code == 200 and person.json()["suppressed"] is not None, person.text
    view = client.get(f"/v1/jobs/{job_id}", headers=ACME).json()
    assert (view["channel"], view["phone_number_id"]) == ("whatsapp", NUMBER)
    assert client.post(f"/v1/jobs/{job_id}/cancel", headers=ACME).status_code == 200
