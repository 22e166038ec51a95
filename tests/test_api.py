"""The producer's API: what a client gets for good and bad input, and that a refusal writes
nothing to Redis."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
from conftest import API_TOKENS, PAGE, RedisServer, psids
from starlette.testclient import TestClient

from services.producer.app import create_app
from shared import keys
from shared.settings import producer_settings

AUTH = {"Authorization": f"Bearer {API_TOKENS['acme']}"}
OTHER = {"Authorization": f"Bearer {API_TOKENS['other']}"}


def settings_env(redis_server: RedisServer, **extra: str) -> dict[str, str]:
    return {
        "FANOUT_REDIS_URL": redis_server.url,
        "FANOUT_API_TOKENS": ",".join(f"{t}={tok}" for t, tok in API_TOKENS.items()),
        "FANOUT_PAGE_TOKENS": f"{PAGE}=EAAsecret",
        "FANOUT_TENANT_PAGES": f"acme={PAGE}",
        "FANOUT_SHARDS": "3",
        "FANOUT_CHUNK_SIZE": "10",
        "FANOUT_WINDOW": "2",
        **extra,
    }


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[TestClient]:
    settings = producer_settings(settings_env(redis_server, FANOUT_MAX_BODY="20000"))
    with TestClient(create_app(settings)) as c:
        yield c


def job(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "page_id": PAGE,
        "message": {"text": "Hi there"},
        "recipients": psids(25),
        "messaging_type": "UPDATE",
    }
    body.update(overrides)
    return body


def test_submit_answers_202_and_writes_backlog_and_window(
    client: TestClient, r: redis.Redis
) -> None:
    recipients = psids(25)
    response = client.post(
        "/v1/jobs", json=job(recipients=[*recipients, recipients[0]]), headers=AUTH
    )
    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "pending"
    assert body["total"] == 25
    assert body["duplicates_removed"] == 1
    assert body["status_url"] == f"/v1/jobs/{body['job_id']}"
    assert response.headers["location"] == body["status_url"]
    k = keys.JobKeys.of(body["job_id"])
    # 25 recipients in chunks of 10 = 3 chunks; a window of 2 released, 1 in the backlog.
    assert r.xlen(k.work) == 2
    assert r.llen(k.backlog) == 1
    assert r.ttl(k.backlog) == -1  # committed: the safety expiry is gone
    assert r.zscore(keys.tenant_jobs("acme", k.shard), body["job_id"]) is not None

    status = client.get(body["status_url"], headers=AUTH)
    assert status.status_code == 200
    view = status.json()
    assert {k: view[k] for k in ("job_id", "status", "page_id", "total", "sent", "failed")} == {
        "job_id": body["job_id"],
        "status": "pending",
        "page_id": PAGE,
        "total": 25,
        "sent": 0,
        "failed": 0,
    }
    assert view["skipped"] == 0 and view["indoubt"] == 0
    assert view["created_at"].endswith("Z") and view["started_at"] is None
    assert view["finished_at"] is None


def test_other_tenant_gets_404_and_unknown_ids_404(client: TestClient) -> None:
    job_id = client.post("/v1/jobs", json=job(), headers=AUTH).json()["job_id"]
    for path, headers in [
        (f"/v1/jobs/{job_id}", OTHER),
        ("/v1/jobs/0-000000000000000000000000", AUTH),
        ("/v1/jobs/../../etc", AUTH),
        ("/v1/jobs/not-a-job", AUTH),
    ]:
        response = client.get(path, headers=headers)
        assert response.status_code == 404, path
        assert response.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Basic abc"},
        {"Authorization": "Bearer "},
    ],
)
def test_missing_or_invalid_token_is_401(
    client: TestClient, r: redis.Redis, headers: dict[str, str]
) -> None:
    for response in (
        client.post("/v1/jobs", json=job(), headers=headers),
        client.get("/v1/jobs/0-000000000000000000000000", headers=headers),
    ):
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "unauthorized"
        assert response.headers["www-authenticate"] == "Bearer"
    assert r.dbsize() == 0


BAD_BODIES: list[tuple[str, Any, int, str, str | None]] = [
    ("malformed JSON", b'{"page_id": ', 400, "invalid_json", None),
    ("not an object", b"[1, 2]", 422, "invalid_field", None),
    ("empty recipients", job(recipients=[]), 422, "invalid_field", "recipients"),
    ("recipient not a string", job(recipients=["1", 2]), 422, "invalid_field", "recipients[1]"),
    ("recipient not a PSID", job(recipients=["12a"]), 422, "invalid_field", "recipients[0]"),
    ("text too long", job(message={"text": "x" * 2001}), 422, "invalid_field", "message.text"),
    ("empty text", job(message={"text": ""}), 422, "invalid_field", "message.text"),
    (
        "missing message",
        {k: v for k, v in job().items() if k != "message"},
        422,
        "invalid_field",
        "message",
    ),
    ("unknown messaging_type", job(messaging_type="PROMO"), 422, "invalid_field", "messaging_type"),
    ("MESSAGE_TAG without tag", job(messaging_type="MESSAGE_TAG"), 422, "invalid_field", "tag"),
    (
        "MESSAGE_TAG bad tag",
        job(messaging_type="MESSAGE_TAG", tag="SALE"),
        422,
        "invalid_field",
        "tag",
    ),
    ("tag without MESSAGE_TAG", job(tag="HUMAN_AGENT"), 422, "invalid_field", "tag"),
    ("unknown field", job(extra=1), 422, "invalid_field", "extra"),
    # Not acme's page, configured or not: the same 403, so no tenant learns which pages exist.
    ("page without token", job(page_id="999"), 403, "page_forbidden", "page_id"),
]


@pytest.mark.parametrize(
    ("name", "body", "status", "code", "field"), BAD_BODIES, ids=[b[0] for b in BAD_BODIES]
)
def test_bad_input_is_a_clear_4xx_and_writes_nothing(
    client: TestClient,
    r: redis.Redis,
    name: str,
    body: Any,
    status: int,
    code: str,
    field: str | None,
) -> None:
    if isinstance(body, bytes):
        response = client.post(
            "/v1/jobs", content=body, headers={**AUTH, "Content-Type": "application/json"}
        )
    else:
        response = client.post("/v1/jobs", json=body, headers=AUTH)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert error["message"]
    if field is not None:
        assert error["field"] == field
    assert r.dbsize() == 0


def test_message_tag_with_valid_tag_is_accepted(client: TestClient) -> None:
    body = job(messaging_type="MESSAGE_TAG", tag="HUMAN_AGENT", recipients=["7"])
    assert client.post("/v1/jobs", json=body, headers=AUTH).status_code == 202


def test_body_over_limit_is_413_from_content_length_before_reading(
    client: TestClient, r: redis.Redis
) -> None:
    body = job(recipients=psids(2000))  # ~30 KB, over the 20,000-byte limit of this client
    response = client.post("/v1/jobs", json=body, headers=AUTH)
    assert response.status_code == 413
    assert response.json()["error"] == {
        "code": "body_too_large",
        "message": "request body exceeds the limit of 20000 bytes (FANOUT_MAX_BODY)",
        "field": None,
    }
    assert r.dbsize() == 0


def test_chunked_body_over_limit_is_413(client: TestClient, r: redis.Redis) -> None:
    def parts() -> Iterator[bytes]:
        yield b'{"page_id": "1001", "recipients": ['
        for _ in range(3000):
            yield b'"12345678901",'
        yield b'"1"]}'

    response = client.post(
        "/v1/jobs", content=parts(), headers={**AUTH, "Content-Type": "application/json"}
    )
    assert response.status_code == 413
    assert r.dbsize() == 0


def test_too_many_recipients_is_422_naming_the_limit(
    redis_server: RedisServer, r: redis.Redis
) -> None:
    settings = producer_settings(settings_env(redis_server, FANOUT_MAX_RECIPIENTS="10"))
    with TestClient(create_app(settings)) as c:
        response = c.post("/v1/jobs", json=job(recipients=psids(11)), headers=AUTH)
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "too_many_recipients"
    assert "limit of 10" in response.json()["error"]["message"]
    assert r.dbsize() == 0


def test_wrong_media_type_is_415(client: TestClient, r: redis.Redis) -> None:
    response = client.post(
        "/v1/jobs", content=b"page_id=1", headers={**AUTH, "Content-Type": "text/plain"}
    )
    assert response.status_code == 415
    assert r.dbsize() == 0


def test_unknown_route_and_method_are_json_errors(client: TestClient) -> None:
    assert client.get("/nope").json()["error"]["code"] == "not_found"
    response = client.delete("/v1/jobs", headers=AUTH)
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"


def test_health_and_readiness(redis_server: RedisServer) -> None:
    settings = producer_settings(settings_env(redis_server))
    with TestClient(create_app(settings)) as c:
        assert c.get("/healthz").json() == {"status": "ok"}
        assert c.get("/readyz").status_code == 200
        redis_server.stop()
        assert c.get("/readyz").status_code == 503
        assert c.get("/healthz").status_code == 200


def test_openapi_describes_the_routes(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    assert set(doc["paths"]) >= {
        "/v1/jobs",
        "/v1/jobs/{job_id}",
        "/v1/jobs/{job_id}/errors",
        "/v1/jobs/{job_id}/events",
        "/v1/jobs/{job_id}/pause",
        "/v1/jobs/{job_id}/resume",
        "/v1/jobs/{job_id}/cancel",
    }
    request = doc["components"]["schemas"]["JobRequest"]
    assert request["properties"]["message"] and "recipients" in request["required"]
    assert request["additionalProperties"] is False  # unknown fields are refused
