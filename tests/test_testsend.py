"""Test send: ``POST /v1/jobs`` with ``test_recipients`` sends the personalised message to those
people only, answers 200 with each outcome, and makes no job (nothing in Redis)."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import API_TOKENS, OTHER_PAGE, PAGE, PAGE_TOKEN, Stack
from test_cli import fanout


def test_sends_to_those_only_and_makes_no_job(stack: Stack) -> None:
    fake = stack.start_fakegraph("--blocked", "222")
    api = stack.start_producer()
    body = {
        "page_id": PAGE,
        "message": {"text": "Hi {{first_name|there}}, {{city}} awaits"},
        "messaging_type": "UPDATE",
        "test_recipients": ["111", "222", "111"],
        "test_variables": {"first_name": "Ann", "city": "Lyon"},
    }
    answer = api.post("/v1/jobs", json=body)
    assert answer.status_code == 200, answer.text
    data = answer.json()
    assert data["test"] is True
    by_psid = {r["recipient"]: r for r in data["results"]}
    assert set(by_psid) == {"111", "222"} and len(data["results"]) == 2  # duplicates once
    assert by_psid["111"]["outcome"] == "sent" and by_psid["111"]["code"] is None
    assert by_psid["222"]["outcome"] == "failed"
    assert (by_psid["222"]["code"], by_psid["222"]["subcode"]) == ("551", "1545041")
    assert fake.http.get("/_fake/texts").json() == {"111": "Hi Ann, Lyon awaits"}
    assert fake.stats()["delivered"] == 1
    assert api.get("/v1/jobs").json()["items"] == []
    assert stack.r.dbsize() == 0  # no job, nothing written
    assert PAGE_TOKEN not in stack.logs()


def test_refusals_name_the_field(stack: Stack, tmp_path: Path) -> None:
    stack.start_fakegraph()
    api = stack.start_producer()
    base = {"page_id": PAGE, "message": {"text": "Hi"}, "messaging_type": "UPDATE"}
    cases = [
        ({**base, "test_recipients": ["1"], "recipients": ["2"]}, 422, "test_recipients"),
        ({**base, "test_recipients": [str(i) for i in range(11)]}, 422, "test_recipients"),
        ({**base, "test_recipients": []}, 422, "test_recipients"),
        ({**base, "test_recipients": ["abc"]}, 422, "test_recipients[0]"),
        ({**base, "page_id": OTHER_PAGE, "test_recipients": ["1"]}, 403, "page_id"),
        (
            {**base, "message": {"text": "Hi {{name}}"}, "test_recipients": ["1"]},
            422,
            "message.text",
        ),
    ]
    for body, status, field in cases:
        answer = api.post("/v1/jobs", json=body)
        assert answer.status_code == status, (body, answer.text)
        assert answer.json()["error"]["field"] == field, (body, answer.text)
    spec = json.dumps({**base, "test_recipients": ["1"]})
    upload = api.post("/v1/jobs", files={"spec": (None, spec), "recipients": ("a.csv", b"id\n1\n")})
    assert upload.status_code == 422 and upload.json()["error"]["field"] == "test_recipients"
    assert stack.fake is not None and stack.fake.stats()["requests"] == 0
    assert stack.r.dbsize() == 0


def test_cli_test_send_uses_the_first_row(stack: Stack, tmp_path: Path) -> None:
    fake = stack.start_fakegraph()
    api = stack.start_producer()
    contacts = tmp_path / "contacts.csv"
    contacts.write_text("id,first_name\n900,Zoe\n901,Yan\n")
    env = {"FANOUT_URL": str(api.base_url), "FANOUT_TOKEN": API_TOKENS["acme"]}
    args = ["send", str(contacts), "--page", PAGE, "--text", "Hi {{first_name}}", "--test", "555"]
    result = fanout(*args, env=env)
    assert result.returncode == 0, result.stderr
    assert "555: sent" in result.stdout, result.stdout
    assert fake.http.get("/_fake/texts").json() == {"555": "Hi Zoe"}
    assert api.get("/v1/jobs").json()["items"] == []
