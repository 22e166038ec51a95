"""``GET /openapi.json``: the API's contract, with schemas generated from the same msgspec
Structs that validate requests and shape answers, so the two cannot drift. Every route the
producer serves is here (tests/test_openapi.py holds the list to the app's), each operation with
an ``operationId`` for client generators, and every operation that reads Redis lists the 503
``unavailable`` it answers while Redis is unreachable."""

from __future__ import annotations

from typing import Any, get_args

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from shared.models import (
    CheckAnswer,
    CheckRequest,
    ErrorPage,
    ErrorResponse,
    JobAccepted,
    JobList,
    JobRequest,
    JobSeries,
    JobStatusName,
    JobView,
    PersonView,
    SendTestAnswer,
    SendTestRequest,
    SuppressAdded,
    SuppressionPage,
    SuppressRequest,
    TierExceeded,
    UploadSpec,
    WhatsAppCheckRequest,
    WhatsAppJobRequest,
    WhatsAppUploadSpec,
    json_encode,
)

_REF = "#/components/schemas/{name}"


def _json(name: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": _REF.format(name=name)}}}


def _one_of(*names: str) -> dict[str, Any]:
    return {"oneOf": [{"$ref": _REF.format(name=name)} for name in names]}


def _answer(name: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": _json(name)}


def _errors(*codes: int) -> dict[str, Any]:
    """The 4xx refusals an operation answers, plus the 503 of every operation that reads or
    writes Redis."""
    refusals = {str(code): _answer("ErrorResponse", "refused; nothing written") for code in codes}
    unavailable = _answer("ErrorResponse", "code unavailable: Redis is unreachable; retry")
    return {**refusals, "503": unavailable}


def _public(operation_id: str, description: str, media: str, schema: dict[str, Any]) -> Any:
    """An operation without a token (probes, scrapes, the contract, the job page)."""
    return {
        "operationId": operation_id,
        "security": [],
        "responses": {"200": {"description": description, "content": {media: {"schema": schema}}}},
    }


def _health() -> dict[str, Any]:
    status = {
        "type": "object",
        "required": ["status"],
        "properties": {"status": {"type": "string"}, "redis": {"type": "boolean"}},
    }
    readyz = _public("getReadiness", "ready: Redis answers", "application/json", status)
    readyz["responses"]["503"] = {
        "description": "not ready: Redis is unreachable",
        "content": {"application/json": {"schema": status}},
    }
    text = {"type": "string"}
    asset = _public("getPageAsset", "a file of the job page", "text/javascript", text)
    asset["parameters"] = [
        {"name": "path", "in": "path", "required": True, "schema": {"type": "string"}}
    ]
    asset["responses"]["404"] = _answer("ErrorResponse", "no such file")
    return {
        "/healthz": {"get": _public("getLiveness", "alive", "application/json", status)},
        "/readyz": {"get": readyz},
        "/metrics": {
            "get": _public("getMetrics", "Prometheus text format 0.0.4", "text/plain", text)
        },
        "/openapi.json": {
            "get": _public("getOpenApi", "this document", "application/json", {"type": "object"})
        },
        "/": {"get": _public("getJobPage", "the job page", "text/html", text)},
        "/static/{path}": {"get": asset},
    }


def build() -> dict[str, Any]:
    _, components = msgspec.json.schema_components(
        [
            *(JobRequest, UploadSpec, JobAccepted, JobView, JobList, ErrorPage, ErrorResponse),
            *(SuppressRequest, SuppressAdded, SuppressionPage, PersonView),
            *(SendTestRequest, SendTestAnswer, JobSeries, CheckRequest, CheckAnswer),
            *(WhatsAppJobRequest, WhatsAppUploadSpec, WhatsAppCheckRequest, TierExceeded),
        ],
        ref_template=_REF,
    )
    # A WhatsApp template job beyond its portfolio's tier: its error carries TierExceeded too.
    both = [{"$ref": _REF.format(name=name)} for name in ("ErrorBody", "TierExceeded")]
    components["TierExceededResponse"] = {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"allOf": both}},
    }
    either = [{"$ref": _REF.format(name=n)} for n in ("ErrorResponse", "TierExceededResponse")]
    refused = {
        "description": "refused; nothing written (a WhatsApp template job beyond its tier:"
        ' code tier_exceeded with the fields of TierExceeded; "tier": "spread" accepts it)',
        "content": {"application/json": {"schema": {"anyOf": either}}},
    }
    job_id = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}
    page = [
        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1}},
        {"name": "after", "in": "query", "schema": {"type": "string"}},
    ]

    def control(operation_id: str) -> dict[str, Any]:
        return {
            "operationId": operation_id,
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
            "spec": {
                "type": "string",
                "description": "UploadSpec (or, channel whatsapp, WhatsAppUploadSpec) as JSON",
            },
            "recipients": {
                "type": "string",
                "format": "binary",
                "description": "CSV with an id column: PSIDs, or E.164 numbers for WhatsApp",
            },
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
                    "operationId": "submitJob",
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
                            "application/json": {
                                "schema": _one_of(
                                    "JobRequest", "WhatsAppJobRequest", "SendTestRequest"
                                )
                            },
                            "multipart/form-data": {"schema": upload},
                        },
                    },
                    "responses": {
                        "202": _answer("JobAccepted", "accepted"),
                        "200": {
                            "description": "ended within ?wait=, or a test send's outcomes",
                            "content": {
                                "application/json": {"schema": _one_of("JobView", "SendTestAnswer")}
                            },
                        },
                        **_errors(400, 401, 403, 409, 411, 413, 415, 422),
                        "422": refused,
                    },
                },
                "get": {
                    "operationId": "listJobs",
                    "parameters": [
                        *page,
                        {
                            "name": "status",
                            "in": "query",
                            "schema": {"enum": list(get_args(JobStatusName))},
                        },
                    ],
                    "responses": {"200": _answer("JobList", "newest first"), **_errors(401, 422)},
                },
            },
            "/v1/jobs/{job_id}": {
                "get": {
                    "operationId": "getJob",
                    "parameters": [job_id],
                    "responses": {"200": _answer("JobView", "the job"), **_errors(401, 404)},
                }
            },
            "/v1/jobs/{job_id}/series": {
                "get": {
                    "operationId": "getJobSeries",
                    "parameters": [job_id],
                    "responses": {
                        "200": _answer("JobSeries", "sent/failed per second and per minute"),
                        **_errors(401, 404),
                    },
                }
            },
            "/v1/checks": {
                "post": {
                    "operationId": "checkJob",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": _one_of("CheckRequest", "WhatsAppCheckRequest")
                            }
                        },
                    },
                    "responses": {
                        "200": _answer("CheckAnswer", "what the job would meet at dispatch"),
                        **_errors(400, 401, 403, 413, 422),
                    },
                }
            },
            "/v1/pages": {
                "get": {
                    "operationId": "listPages",
                    "responses": {
                        "200": {
                            "description": "the pages the tenant may send as, and its WhatsApp"
                            " numbers (numbers: only when it has some)",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "required": ["items"],
                                        "properties": {
                                            "items": {
                                                "type": "array",
                                                "items": {
                                                    "type": "object",
                                                    "properties": {"page_id": {"type": "string"}},
                                                },
                                            },
                                            "numbers": {
                                                "type": "array",
                                                "items": {
                                                    "type": "object",
                                                    "properties": {
                                                        "phone_number_id": {"type": "string"}
                                                    },
                                                },
                                            },
                                        },
                                    }
                                }
                            },
                        },
                        **_errors(401),
                    },
                }
            },
            "/v1/jobs/{job_id}/errors": {
                "get": {
                    "operationId": "listJobErrors",
                    "parameters": [
                        job_id,
                        *page,
                        {
                            "name": "outcome",
                            "in": "query",
                            "description": "failed (default), or skipped at dispatch with why",
                            "schema": {"enum": ["failed", "skipped"]},
                        },
                    ],
                    "responses": {
                        "200": _answer("ErrorPage", "failures, or skipped recipients"),
                        **_errors(401, 404, 422),
                    },
                }
            },
            "/v1/jobs/{job_id}/events": {
                "get": {
                    "operationId": "streamJobEvents",
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
            "/v1/jobs/{job_id}/pause": {"post": control("pauseJob")},
            "/v1/jobs/{job_id}/resume": {"post": control("resumeJob")},
            "/v1/jobs/{job_id}/cancel": {"post": control("cancelJob")},
            **_people(page),
            **_health(),
            "/webhooks/messenger": _webhooks("Messenger", "a Messenger (page)"),
            "/webhooks/whatsapp": _webhooks("WhatsApp", "a WhatsApp (whatsapp_business_account)"),
        },
    }


def _people(page: list[dict[str, Any]]) -> dict[str, Any]:
    """The page's suppression list and one person's state; a page not the tenant's is 403."""
    page_id = {"name": "page_id", "in": "path", "required": True, "schema": {"type": "string"}}
    psid = {"name": "psid", "in": "path", "required": True, "schema": {"type": "string"}}
    return {
        "/v1/pages/{page_id}/suppressions": {
            "get": {
                "operationId": "listSuppressions",
                "parameters": [page_id, *page],
                "responses": {
                    "200": _answer("SuppressionPage", "a page of them; next as ?after="),
                    **_errors(401, 403, 422),
                },
            },
            "post": {
                "operationId": "addSuppressions",
                "parameters": [page_id],
                "requestBody": {"required": True, "content": _json("SuppressRequest")},
                "responses": {
                    "200": _answer("SuppressAdded", "suppressed"),
                    **_errors(400, 401, 403, 413, 422),
                },
            },
        },
        "/v1/pages/{page_id}/suppressions/{psid}": {
            "delete": {
                "operationId": "removeSuppression",
                "parameters": [page_id, psid],
                "responses": {
                    "204": {"description": "no longer suppressed"},
                    **_errors(401, 403, 404, 422),
                },
            }
        },
        "/v1/pages/{page_id}/people/{psid}": {
            "get": {
                "operationId": "getPerson",
                "parameters": [page_id, psid],
                "responses": {
                    "200": _answer("PersonView", "what fanout knows of the person"),
                    **_errors(401, 403, 422),
                },
            }
        },
    }


def _webhooks(channel: str, notification: str) -> dict[str, Any]:
    """Meta calls these (no bearer token): the verify token and the app secret authenticate.
    https://developers.facebook.com/documentation/business-messaging/messenger-platform/webhooks
    https://developers.facebook.com/documentation/business-messaging/whatsapp/webhooks/create-webhook-endpoint"""
    text = {"type": "string"}
    query = [
        {"name": name, "in": "query", "schema": text}
        for name in ("hub.mode", "hub.verify_token", "hub.challenge")
    ]
    verify = _public(f"verify{channel}Webhook", "hub.challenge, echoed", "text/plain", text)
    verify["parameters"] = query
    verify["responses"]["403"] = _answer("ErrorResponse", "hub.verify_token does not match")
    receive = _public(
        f"receive{channel}Webhook",
        "EVENT_RECEIVED: the batch is durably queued",
        "text/plain",
        text,
    )
    receive["parameters"] = [
        {
            "name": "X-Hub-Signature-256",
            "in": "header",
            "required": True,
            "description": "sha256=<hex HMAC-SHA256 of the raw body, keyed by the app secret>",
            "schema": text,
        }
    ]
    receive["requestBody"] = {
        "required": True,
        "content": {"application/json": {"schema": {"type": "object"}}},
    }
    refusals = {
        "400": "not JSON",
        "401": "X-Hub-Signature-256 missing or wrong (SHA-1 alone counts as missing)",
        "413": "over 1 MiB",
        "422": f"not {notification} notification",
    }
    for code, why in refusals.items():
        receive["responses"][code] = _answer("ErrorResponse", f"{why}; nothing recorded")
    receive["responses"]["503"] = _answer("ErrorResponse", "Redis unreachable; Meta retries")
    return {"get": verify, "post": receive}


_DOCUMENT = json_encode(build())


async def openapi(request: Request) -> Response:
    return Response(_DOCUMENT, media_type="application/json")
