"""``GET /openapi.json``: the API's contract, with schemas generated from the same msgspec
Structs that validate requests and shape answers, so the two cannot drift."""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from shared.models import (
    ErrorPage,
    ErrorResponse,
    JobAccepted,
    JobList,
    JobRequest,
    JobView,
    UploadSpec,
    json_encode,
)

_REF = "#/components/schemas/{name}"


def _json(name: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": _REF.format(name=name)}}}


def _answer(name: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": _json(name)}


def _errors(*codes: int) -> dict[str, Any]:
    return {str(code): _answer("ErrorResponse", "refused; nothing written") for code in codes}


def build() -> dict[str, Any]:
    _, components = msgspec.json.schema_components(
        [JobRequest, UploadSpec, JobAccepted, JobView, JobList, ErrorPage, ErrorResponse],
        ref_template=_REF,
    )
    job_id = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}
    page = [
        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1}},
        {"name": "after", "in": "query", "schema": {"type": "string"}},
    ]
    control = {
        "parameters": [job_id],
        "responses": {
            "200": _answer("JobView", "the job after the change"),
            **_errors(401, 404, 409),
        },
    }
    upload = {
        "type": "object",
        "required": ["spec", "recipients"],
        "properties": {
            "spec": {"type": "string", "description": "UploadSpec as JSON"},
            "recipients": {"type": "string", "format": "binary", "description": "CSV, id column"},
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "fanout", "version": "0.1.0"},
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
        "paths": {
            "/v1/jobs": {
                "post": {
                    "parameters": [
                        {
                            "name": "wait",
                            "in": "query",
                            "schema": {"type": "number", "maximum": 25},
                        },
                        {"name": "Idempotency-Key", "in": "header", "schema": {"type": "string"}},
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {
                            **_json("JobRequest"),
                            "multipart/form-data": {"schema": upload},
                        },
                    },
                    "responses": {
                        "202": _answer("JobAccepted", "accepted"),
                        "200": _answer("JobView", "ended within ?wait="),
                        **_errors(400, 401, 403, 411, 413, 415, 422),
                    },
                },
                "get": {
                    "parameters": [
                        *page,
                        {"name": "status", "in": "query", "schema": {"type": "string"}},
                    ],
                    "responses": {"200": _answer("JobList", "newest first"), **_errors(401, 422)},
                },
            },
            "/v1/jobs/{job_id}": {
                "get": {
                    "parameters": [job_id],
                    "responses": {"200": _answer("JobView", "the job"), **_errors(401, 404)},
                }
            },
            "/v1/jobs/{job_id}/errors": {
                "get": {
                    "parameters": [job_id, *page],
                    "responses": {
                        "200": _answer("ErrorPage", "failures"),
                        **_errors(401, 404, 422),
                    },
                }
            },
            "/v1/jobs/{job_id}/events": {
                "get": {
                    "parameters": [job_id],
                    "responses": {
                        "200": {
                            "description": "Server-Sent Events: `job` on each change, `end` last",
                            "content": {"text/event-stream": {"schema": {"type": "string"}}},
                        },
                        **_errors(401, 404),
                    },
                }
            },
            "/v1/jobs/{job_id}/pause": {"post": control},
            "/v1/jobs/{job_id}/resume": {"post": control},
            "/v1/jobs/{job_id}/cancel": {"post": control},
        },
    }


_DOCUMENT = json_encode(build())


async def openapi(request: Request) -> Response:
    return Response(_DOCUMENT, media_type="application/json")
