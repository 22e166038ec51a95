"""POST /v1/checks: the policy checks a job would meet, shown on the job page before sending:
every submit rule as a 422 naming its field, then the window rule and how many recipients are
outside the window or suppressed. Nothing is written."""

from __future__ import annotations

from conftest import OTHER_PAGE, PAGE, Stack


def test_counts_what_dispatch_would_skip(stack: Stack) -> None:
    api = stack.start_producer()
    psids = [str(7000 + i) for i in range(5)]
    added = api.post(f"/v1/pages/{PAGE}/suppressions", json={"recipients": psids[:2]})
    assert added.status_code == 200, added.text
    keys_before = set(stack.r.keys("*"))
    base = {"page_id": PAGE, "message": {"text": "Hi"}, "messaging_type": "UPDATE"}
    answer = api.post("/v1/checks", json={**base, "recipients": psids + psids[:1]})
    assert answer.status_code == 200, answer.text
    data = answer.json()
    assert (data["checked"], data["suppressed"], data["would_skip"]) == (5, 2, 2)
    assert data["window_rule"] == "ignore" and data["window_default"] is True
    assert data["outside_window"] == 5  # nobody wrote to the page
    assert any("not enforced" in note for note in data["notes"])
    required = api.post("/v1/checks", json={**base, "window": "require", "recipients": psids})
    assert required.json()["would_skip"] == 5 and required.json()["window_rule"] == "require"
    unsuppressed = api.post("/v1/checks", json={**base, "suppress": False, "recipients": psids})
    assert unsuppressed.json()["suppressed"] == 0
    assert set(stack.r.keys("*")) == keys_before  # nothing written


def test_every_submit_rule_names_its_field(stack: Stack) -> None:
    api = stack.start_producer()
    base = {"page_id": PAGE, "message": {"text": "Hi"}, "messaging_type": "UPDATE"}
    card = {
        "attachment": {
            "type": "template",
            "payload": {
                "template_type": "generic",
                "elements": [
                    {
                        "title": "Hi",
                        "buttons": [
                            {"type": "web_url", "title": "x" * 21, "url": "https://e.com/"}
                        ],
                    }
                ],
            },
        }
    }
    cases = [
        ({**base, "message": card}, 422, "message.attachment.payload.elements[0].buttons[0].title"),
        ({**base, "messaging_type": "MESSAGE_TAG", "tag": "ACCOUNT_UPDATE"}, 422, "tag"),
        ({**base, "page_id": OTHER_PAGE}, 403, "page_id"),
    ]
    for body, status, field in cases:
        answer = api.post("/v1/checks", json={**body, "recipients": ["1"]})
        assert answer.status_code == status, (body, answer.text)
        assert answer.json()["error"]["field"] == field, answer.text
    # a placeholder without a default: fine for a CSV with that column, said in a note
    named = api.post(
        "/v1/checks", json={**base, "message": {"text": "Hi {{name}}"}, "recipients": ["1"]}
    )
    assert any(note.endswith("every row: name") for note in named.json()["notes"])
