"""Big uploads: a CSV of recipients with personalisation columns, streamed into Redis; every
bad upload is a 4xx naming what is wrong, and writes nothing."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from conftest import PAGE, Stack

SPEC = {
    "page_id": PAGE,
    "message": {"text": "Hi {{first_name}}, from {{city|our shop}}!"},
    "messaging_type": "UPDATE",
}


def upload(api: httpx.Client, csv_text: str | bytes, spec: Any = SPEC, **kw: Any) -> httpx.Response:
    data = csv_text.encode() if isinstance(csv_text, str) else csv_text
    files = {
        "spec": (None, json.dumps(spec) if not isinstance(spec, bytes) else spec),
        "recipients": ("contacts.csv", data, "text/csv"),
    }
    return api.post("/v1/jobs", files=files, **kw)


def test_csv_upload_personalises_each_message(stack: Stack) -> None:
    stack.start_fakegraph()
    api = stack.start_producer()
    stack.start_consumer("c1")
    rows = ["id,first_name,city"] + [
        f"{10**12 + i},Ann{i},{'Oslo' if i % 2 else ''}" for i in range(250)
    ]
    rows.append(f"{10**12 + 3},Dup,Again")  # a duplicate PSID: sent once, reported
    answer = upload(api, "\n".join(rows) + "\n")
    assert answer.status_code == 202, answer.text
    accepted = answer.json()
    assert accepted["total"] == 250 and accepted["duplicates_removed"] == 1
    job = stack.wait_done(accepted["job_id"], 30)
    assert job["status"] == "completed" and job["sent"] == 250
    assert stack.fake is not None
    texts = stack.fake.http.get("/_fake/texts").json()
    assert texts[str(10**12 + 1)] == "Hi Ann1, from Oslo!"
    assert texts[str(10**12 + 2)] == "Hi Ann2, from our shop!"
    assert texts[str(10**12 + 3)] == "Hi Ann3, from Oslo!"  # the first row wins
    assert stack.fake.stats()["duplicates"] == 0


def test_rendered_text_over_2000_characters_fails_that_recipient(stack: Stack) -> None:
    stack.start_fakegraph()
    api = stack.start_producer()
    stack.start_consumer("c1")
    spec = {**SPEC, "message": {"text": "x" * 1985 + " {{first_name}}"}}
    answer = upload(api, f"id,first_name\n111,Bo\n222,{'L' * 20}\n", spec)
    job = stack.wait_done(answer.json()["job_id"], 30)
    assert (job["sent"], job["failed"]) == (1, 1)
    assert job["error_codes"] == {"text_too_long": 1}


BAD_UPLOADS = [
    ("no id column", "name\nAnn\n", SPEC, 422, "invalid_csv", "no `id` column"),
    ("column the text needs", "id,city\n1,Oslo\n", SPEC, 422, "invalid_csv", "no `first_name`"),
    (
        "unfillable row",
        "id,first_name\n1,Ann\n2,\n",
        SPEC,
        422,
        "unfillable_placeholder",
        "row 2 (line 3), column first_name",
    ),
    (
        "not a PSID",
        "id,first_name\n1,Ann\nabc,Bo\n",
        SPEC,
        422,
        "invalid_csv",
        "row 2 (line 3), column id",
    ),
    ("empty file", "", SPEC, 422, "invalid_csv", "empty"),
    ("header only", "id,first_name\n", SPEC, 422, "invalid_csv", "no recipients"),
    ("not UTF-8", b"id,first_name\n1,\xff\xfe\n", SPEC, 422, "invalid_csv", "not UTF-8"),
    ("bad spec JSON", "id\n1\n", b"{nope", 400, "invalid_json", "spec"),
    (
        "spec with recipients",
        "id\n1\n",
        {**SPEC, "recipients": ["1"]},
        422,
        "invalid_field",
        "recipients",
    ),
]


@pytest.mark.parametrize(
    ("name", "csv_text", "spec", "status", "code", "text"),
    BAD_UPLOADS,
    ids=[b[0] for b in BAD_UPLOADS],
)
def test_bad_uploads_are_4xx_and_write_nothing(
    stack: Stack, name: str, csv_text: str | bytes, spec: Any, status: int, code: str, text: str
) -> None:
    api = stack.start_producer()
    answer = upload(api, csv_text, spec)
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert error["code"] == code
    assert text in error["message"] or text == error["field"]
    assert stack.r.dbsize() == 0


def test_wrong_parts_are_422(stack: Stack) -> None:
    api = stack.start_producer()
    only_spec = api.post("/v1/jobs", files={"spec": (None, json.dumps(SPEC))})
    assert only_spec.status_code == 422, only_spec.text
    assert only_spec.json()["error"]["field"] == "recipients"
    extra = api.post(
        "/v1/jobs",
        files={
            "spec": (None, json.dumps(SPEC)),
            "recipients": ("a.csv", b"id\n1\n"),
            "other": (None, "x"),
        },
    )
    assert extra.status_code == 422
    no_spec = api.post("/v1/jobs", files={"recipients": ("a.csv", b"id\n1\n")})
    assert no_spec.status_code == 422 and no_spec.json()["error"]["field"] == "spec"
    assert stack.r.dbsize() == 0


def test_json_job_with_a_placeholder_needs_a_default(stack: Stack) -> None:
    api = stack.start_producer()
    body = {**SPEC, "recipients": ["1"], "message": {"text": "Hi {{first_name}}"}}
    answer = api.post("/v1/jobs", json=body)
    assert answer.status_code == 422
    assert answer.json()["error"]["code"] == "unfillable_placeholder"
    body["message"] = {"text": "Hi {{first_name|there}}"}
    assert api.post("/v1/jobs", json=body).status_code == 202
    broken = {**body, "message": {"text": "Hi {{first name}}"}}
    assert api.post("/v1/jobs", json=broken).status_code == 422


def test_too_many_recipients_in_an_upload_is_422_and_writes_nothing(stack: Stack) -> None:
    stack.env["FANOUT_MAX_RECIPIENTS"] = "100"
    api = stack.start_producer()
    csv_text = "id,first_name\n" + "".join(f"{i + 1},A\n" for i in range(101))
    answer = upload(api, csv_text)
    assert answer.status_code == 422 and answer.json()["error"]["code"] == "too_many_recipients"
    assert "limit of 100" in answer.json()["error"]["message"]
    assert stack.r.dbsize() == 0
