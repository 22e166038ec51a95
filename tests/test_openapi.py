"""``GET /openapi.json`` is a complete, valid contract: valid OpenAPI 3.1
(openapi-spec-validator), every served route documented and nothing more, every operation with
a unique ``operationId`` (what client generators name methods by) and a schema for every answer,
the 503 ``unavailable`` wherever Redis is read, and real answers of a running producer valid
against their documented schemas."""

from __future__ import annotations

import re
from typing import Any

import jsonschema
import pytest
from conftest import API_TOKENS, Stack, psids
from openapi_spec_validator import validate

from services.producer import openapi
from services.producer.app import create_app
from shared.settings import producer_settings

Doc = dict[str, Any]
METHODS = {"get", "post", "put", "patch", "delete"}


@pytest.fixture(scope="module")
def doc() -> Doc:
    return openapi.build()


def operations(doc: Doc) -> list[tuple[str, str, Doc]]:
    return [
        (path, method, op)
        for path, item in doc["paths"].items()
        for method, op in item.items()
        if method in METHODS
    ]


def test_the_document_is_valid_openapi_3_1(doc: Doc) -> None:
    validate(doc)  # raises OpenAPIValidationError, naming the place
    assert doc["openapi"].startswith("3.1")


def test_every_served_route_is_documented_and_nothing_else() -> None:
    settings = producer_settings(
        {
            "FANOUT_API_TOKENS": "acme=t",
            "FANOUT_PAGE_TOKENS": "1=x",
            "FANOUT_TENANT_PAGES": "acme=1",
        }
    )
    app = create_app(settings)
    served = {
        (route.path, method.lower())
        for route in app.routes
        for method in getattr(route, "methods", None) or ()
        if method != "HEAD"
    }
    documented = {(path, method) for path, method, _ in operations(openapi.build())}
    assert served == documented, (sorted(served - documented), sorted(documented - served))


def test_each_operation_has_an_id_and_each_answer_a_schema(doc: Doc) -> None:
    ids = [op.get("operationId") for _, _, op in operations(doc)]
    assert all(ids), [f"{p} {m}" for p, m, op in operations(doc) if not op.get("operationId")]
    assert len(ids) == len(set(ids)), "operationIds must be unique"
    for operation_id in ids:
        # names a generator turns into methods: an identifier, camelCase
        assert re.fullmatch(r"[a-z][A-Za-z]+", operation_id), operation_id
    for path, method, op in operations(doc):
        assert op["responses"], (path, method)
        for status, answer in op["responses"].items():
            assert answer.get("description"), (path, method, status)
            if status == "204":  # No Content: a body would break HTTP itself
                assert "content" not in answer, (path, method)
                continue
            content = answer.get("content")
            assert content, f"{method.upper()} {path} {status}: no content"
            for media, body in content.items():
                assert "schema" in body, (path, method, status, media)
        path_params = set(re.findall(r"\{(\w+)\}", path))
        declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
        assert path_params == declared, (path, method)


def test_every_redis_operation_lists_503_and_every_v1_one_401(doc: Doc) -> None:
    for path, method, op in operations(doc):
        if path.startswith("/v1/"):
            assert {"401", "503"} <= set(op["responses"]), (path, method)
            assert op.get("security") != [], (path, method)
            ref = op["responses"]["503"]["content"]["application/json"]["schema"]["$ref"]
            assert ref.endswith("/ErrorResponse")
    assert "503" in doc["paths"]["/readyz"]["get"]["responses"]
    for public in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
        assert doc["paths"][public]["get"]["security"] == []  # probes and scrapes need no token


def test_the_job_view_documents_callback_status(doc: Doc) -> None:
    view = doc["components"]["schemas"]["JobView"]["properties"]
    assert "callback_status" in view and "callback_url" in view


def _check(doc: Doc, path: str, method: str, status: int, body: Any) -> None:
    answer = doc["paths"][path][method]["responses"][str(status)]
    schema = answer["content"]["application/json"]["schema"]
    jsonschema.Draft202012Validator({**schema, "components": doc["components"]}).validate(body)


def test_real_answers_match_their_schemas(stack: Stack) -> None:
    stack.start_fakegraph("--blocked", "10000000003")
    api = stack.start_producer()
    stack.start_consumer("c1")
    served: Doc = api.get("/openapi.json").json()
    assert served == openapi.build()
    doc = served

    body = {"page_id": "1001", "message": {"text": "hi"}, "messaging_type": "UPDATE"}
    accepted = api.post("/v1/jobs", json={**body, "recipients": psids(5)})
    _check(doc, "/v1/jobs", "post", 202, accepted.json())
    job_id = accepted.json()["job_id"]
    job = stack.wait_done(job_id, 30)
    _check(doc, "/v1/jobs/{job_id}", "get", 200, job)
    _check(doc, "/v1/jobs", "get", 200, api.get("/v1/jobs").json())
    _check(doc, "/v1/jobs/{job_id}/errors", "get", 200, api.get(f"/v1/jobs/{job_id}/errors").json())
    cancel = api.post(f"/v1/jobs/{job_id}/cancel")
    _check(doc, "/v1/jobs/{job_id}/cancel", "post", cancel.status_code, cancel.json())
    bad = api.post("/v1/jobs", json={**body, "recipients": []})
    _check(doc, "/v1/jobs", "post", bad.status_code, bad.json())
    no_token = api.get(f"/v1/jobs/{job_id}", headers={"Authorization": ""})
    _check(doc, "/v1/jobs/{job_id}", "get", 401, no_token.json())
    missing = api.get("/v1/jobs/0-000000000000000000000000")
    _check(doc, "/v1/jobs/{job_id}", "get", 404, missing.json())
    for probe in ("/healthz", "/readyz"):
        answer = api.get(probe, headers={"Authorization": ""})
        _check(doc, probe, "get", answer.status_code, answer.json())
    assert api.get("/metrics", headers={"Authorization": ""}).status_code == 200
    assert API_TOKENS["acme"] not in str(doc)
