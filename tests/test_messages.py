"""Messages as Meta defines them: the lanes and tags refused at submit (nothing written), the
exact path of a bad field, and rich and utility-template bodies arriving at the fake Send API
exactly as Meta's docs show them, filled per recipient from a CSV."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis
from conftest import API_TOKENS, PAGE, RedisServer, Stack, psids
from starlette.testclient import TestClient

from services.producer.app import create_app
from shared import keys
from shared.settings import producer_settings

AUTH = {"Authorization": f"Bearer {API_TOKENS['acme']}"}


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[TestClient]:
    env = {
        "FANOUT_REDIS_URL": redis_server.url,
        "FANOUT_API_TOKENS": ",".join(f"{t}={tok}" for t, tok in API_TOKENS.items()),
        "FANOUT_PAGE_TOKENS": f"{PAGE}=EAAsecret",
        "FANOUT_TENANT_PAGES": f"acme={PAGE}",
        "FANOUT_SHARDS": "2",
        "FANOUT_CHUNK_SIZE": "10",
    }
    with TestClient(create_app(producer_settings(env))) as c:
        yield c


def job(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "page_id": PAGE,
        "message": {"text": "Your order has shipped"},
        "recipients": psids(3),
        "messaging_type": "UPDATE",
    }
    body.update(overrides)
    return body


def upload(api: httpx.Client | TestClient, csv_text: str, spec: dict[str, Any]) -> httpx.Response:
    files = {
        "spec": (None, json.dumps(spec)),
        "recipients": ("contacts.csv", csv_text.encode(), "text/csv"),
    }
    return api.post("/v1/jobs", files=files, headers=AUTH)


def generic(elements: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "attachment": {
            "type": "template",
            "payload": {"template_type": "generic", "elements": elements},
        }
    }


FEEDBACK = {
    "attachment": {
        "type": "template",
        "payload": {
            "template_type": "customer_feedback",
            "title": "Rate your experience with Original Coast Clothing",
            "subtitle": "Let Original Coast Clothing know how they are doing.",
            "button_title": "Rate Experience",
            "feedback_screens": [
                {
                    "questions": [
                        {
                            "id": "hauydmns8",
                            "type": "csat",
                            "title": "How would you rate your experience?",
                            "score_label": "neg_pos",
                            "score_option": "five_stars",
                            "follow_up": {"type": "free_form", "placeholder": "Give feedback"},
                        }
                    ]
                }
            ],
            "business_privacy": {"url": "https://www.example.com"},
            "expires_in_days": 3,
        },
    }
}
UTILITY = {
    "template": {
        "name": "order_update",
        "language": {"code": "en_US"},
        "components": [{"type": "body", "parameters": [{"type": "text", "text": "confirmed"}]}],
    }
}


def refused(response: httpx.Response, r: redis.Redis, code: str, field: str) -> str:
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert (error["code"], error["field"]) == (code, field), error
    assert r.dbsize() == 0  # nothing written
    message: str = error["message"]
    return message


# ---- tags and lanes, refused at submit ----


@pytest.mark.parametrize(
    "tag", ["ACCOUNT_UPDATE", "CONFIRMED_EVENT_UPDATE", "POST_PURCHASE_UPDATE"]
)
def test_retired_tags_are_refused_with_the_date_and_the_utility_lane(
    client: TestClient, r: redis.Redis, tag: str
) -> None:
    body = job(messaging_type="MESSAGE_TAG", tag=tag)
    message = refused(client.post("/v1/jobs", json=body, headers=AUTH), r, "tag_retired", "tag")
    assert tag in message and "2026-04-27" in message and '"UTILITY"' in message


LANE_REFUSALS: list[tuple[str, dict[str, Any], str, str]] = [
    (
        "CUSTOMER_FEEDBACK with text",
        job(messaging_type="MESSAGE_TAG", tag="CUSTOMER_FEEDBACK"),
        "tag_needs_template",
        "message",
    ),
    (
        "CUSTOMER_FEEDBACK with a generic template",
        job(
            messaging_type="MESSAGE_TAG", tag="CUSTOMER_FEEDBACK", message=generic([{"title": "A"}])
        ),
        "tag_needs_template",
        "message",
    ),
    (
        "HUMAN_AGENT to 2 recipients",
        job(messaging_type="MESSAGE_TAG", tag="HUMAN_AGENT", recipients=["1", "2"]),
        "tag_not_for_bulk",
        "recipients",
    ),
    (
        "UTILITY with a tag",
        job(messaging_type="UTILITY", tag="HUMAN_AGENT", message=UTILITY),
        "invalid_field",
        "tag",
    ),
    (
        "UTILITY without a template",
        job(messaging_type="UTILITY"),
        "invalid_field",
        "message.template",
    ),
    ("a template outside UTILITY", job(message=UTILITY), "invalid_field", "messaging_type"),
    ("MESSAGE_TAG without a tag", job(messaging_type="MESSAGE_TAG"), "invalid_field", "tag"),
]


@pytest.mark.parametrize(
    ("name", "body", "code", "field"), LANE_REFUSALS, ids=[c[0] for c in LANE_REFUSALS]
)
def test_lane_and_tag_rules_refuse_at_submit(
    client: TestClient, r: redis.Redis, name: str, body: dict[str, Any], code: str, field: str
) -> None:
    refused(client.post("/v1/jobs", json=body, headers=AUTH), r, code, field)


def test_human_agent_in_a_csv_of_two_rows_is_refused(client: TestClient, r: redis.Redis) -> None:
    spec = job(messaging_type="MESSAGE_TAG", tag="HUMAN_AGENT")
    del spec["recipients"]
    refused(upload(client, "id\n11\n12\n", spec), r, "tag_not_for_bulk", "recipients")
    assert upload(client, "id\n11\n", spec).status_code == 202  # one person: a human's reply


def test_the_lanes_meta_allows_are_accepted(client: TestClient, r: redis.Redis) -> None:
    feedback = job(messaging_type="MESSAGE_TAG", tag="CUSTOMER_FEEDBACK", message=FEEDBACK)
    agent = job(messaging_type="MESSAGE_TAG", tag="HUMAN_AGENT", recipients=["5", "5"])
    utility = job(messaging_type="UTILITY", message=UTILITY)
    kinds = []
    for body in (feedback, agent, utility):
        answer = client.post("/v1/jobs", json=body, headers=AUTH)
        assert answer.status_code == 202, answer.text
        view = client.get(answer.json()["status_url"], headers=AUTH).json()
        kinds.append((view["messaging_type"], view["tag"], view["message_kind"]))
    assert kinds == [
        ("MESSAGE_TAG", "CUSTOMER_FEEDBACK", "customer_feedback_template"),
        ("MESSAGE_TAG", "HUMAN_AGENT", "text"),  # the same PSID twice is one recipient
        ("UTILITY", None, "utility_template"),
    ]


# ---- a bad message names its field ----

BUTTON = {"type": "postback", "title": "Buy", "payload": "BUY"}
ELEMENT = {"title": "Shoes", "buttons": [BUTTON]}
BAD_MESSAGES: list[tuple[str, dict[str, Any], str]] = [
    (
        "button title over 20",
        generic([ELEMENT, ELEMENT, {"title": "C", "buttons": [{**BUTTON, "title": "x" * 21}]}]),
        "message.attachment.payload.elements[2].buttons[0].title",
    ),
    (
        "4 buttons",
        generic([{"title": "A", "buttons": [BUTTON] * 4}]),
        "message.attachment.payload.elements[0].buttons",
    ),
    ("11 elements", generic([ELEMENT] * 11), "message.attachment.payload.elements"),
    (
        "element title over 80",
        generic([{"title": "t" * 81}]),
        "message.attachment.payload.elements[0].title",
    ),
    (
        "web_url over http",
        generic(
            [
                {
                    "title": "A",
                    "buttons": [{"type": "web_url", "title": "Go", "url": "http://x.io/a"}],
                }
            ]
        ),
        "message.attachment.payload.elements[0].buttons[0].url",
    ),
    (
        "14 quick replies",
        {
            "text": "Pick",
            "quick_replies": [{"content_type": "text", "title": "A", "payload": "A"}] * 14,
        },
        "message.quick_replies",
    ),
    (
        "quick reply payload over 1000",
        {
            "text": "Pick",
            "quick_replies": [{"content_type": "text", "title": "A", "payload": "p" * 1001}],
        },
        "message.quick_replies[0].payload",
    ),
    (
        "image by url and id",
        {
            "attachment": {
                "type": "image",
                "payload": {"url": "https://x.io/a.png", "attachment_id": "1"},
            }
        },
        "message.attachment.payload",
    ),
    ("text and attachment", {"text": "Hi", **generic([ELEMENT])}, "message"),
    ("text over 2,000", {"text": "x" * 2001}, "message.text"),
    (
        "unknown button type",
        generic([{"title": "A", "buttons": [{"type": "call", "title": "A"}]}]),
        "message.attachment.payload.elements[0].buttons[0].type",
    ),
    (
        "utility parameter with an unknown field",
        {
            "template": {
                **UTILITY["template"],
                "components": [
                    {"type": "body", "parameters": [{"type": "text", "text": "a", "x": 1}]}
                ],
            }
        },
        "message.template.components[0].parameters[0].x",
    ),
    (
        "malformed placeholder",
        generic([{"title": "Hi {{name"}]),
        "message.attachment.payload.elements[0].title",
    ),
]


@pytest.mark.parametrize(
    ("name", "message", "field"), BAD_MESSAGES, ids=[c[0] for c in BAD_MESSAGES]
)
def test_a_bad_message_is_422_naming_the_exact_field(
    client: TestClient, r: redis.Redis, name: str, message: dict[str, Any], field: str
) -> None:
    refused(
        client.post("/v1/jobs", json=job(message=message), headers=AUTH), r, "invalid_field", field
    )


def test_in_an_upload_the_field_is_under_spec(client: TestClient, r: redis.Redis) -> None:
    spec = {k: v for k, v in job(message=BAD_MESSAGES[0][1]).items() if k != "recipients"}
    field = f"spec.{BAD_MESSAGES[0][2]}"
    refused(upload(client, "id\n1\n", spec), r, "invalid_field", field)


def test_a_placeholder_without_a_column_names_the_field_using_it(
    client: TestClient, r: redis.Redis
) -> None:
    message = generic([{"title": "Shoes", "subtitle": "for {{first_name}}"}])
    spec = {k: v for k, v in job(message=message).items() if k != "recipients"}
    field = "message.attachment.payload.elements[0].subtitle"
    refused(upload(client, "id\n1\n", spec), r, "invalid_csv", field)
    answer = client.post("/v1/jobs", json=job(message=message), headers=AUTH)
    assert refused(answer, r, "unfillable_placeholder", field)


# ---- bodies at the Send API, per recipient (real processes) ----

CARD_MESSAGE = {
    **generic(
        [
            {
                "title": "{{first_name}}, your shoes are back",
                "subtitle": "Size {{size|one size}}",
                "image_url": "https://shop.example/img/{{sku}}.png",
                "default_action": {"type": "web_url", "url": "https://shop.example/p/{{sku}}"},
                "buttons": [
                    {"type": "web_url", "url": "https://shop.example/buy/{{sku}}", "title": "Buy"},
                    {"type": "postback", "title": "Not now", "payload": "SNOOZE_{{sku}}"},
                ],
            }
        ]
    ),
    "quick_replies": [
        {"content_type": "text", "title": "More like {{sku}}", "payload": "MORE_{{sku}}"},
        {"content_type": "text", "title": "Stop", "payload": "STOP"},
    ],
}


def card_for(first_name: str, size: str, sku: str) -> dict[str, Any]:
    """The message Meta's generic-template and quick-reply docs show, filled by hand."""
    return {
        "attachment": {
            "type": "template",
            "payload": {
                "template_type": "generic",
                "elements": [
                    {
                        "title": f"{first_name}, your shoes are back",
                        "subtitle": f"Size {size}",
                        "image_url": f"https://shop.example/img/{sku}.png",
                        "default_action": {
                            "type": "web_url",
                            "url": f"https://shop.example/p/{sku}",
                        },
                        "buttons": [
                            {
                                "type": "web_url",
                                "url": f"https://shop.example/buy/{sku}",
                                "title": "Buy",
                            },
                            {"type": "postback", "title": "Not now", "payload": f"SNOOZE_{sku}"},
                        ],
                    }
                ],
            },
        },
        "quick_replies": [
            {"content_type": "text", "title": f"More like {sku}", "payload": f"MORE_{sku}"},
            {"content_type": "text", "title": "Stop", "payload": "STOP"},
        ],
    }


def test_generic_template_with_buttons_and_quick_replies_filled_from_a_csv(stack: Stack) -> None:
    fake = stack.start_fakegraph()
    api = stack.start_producer()
    stack.start_consumer("c1")
    spec = {"page_id": PAGE, "message": CARD_MESSAGE, "messaging_type": "UPDATE"}
    rows = "id,first_name,size,sku\n101,Ann,38,A1\n102,Bo,,B2\n103," + "L" * 60 + ",40,C3\n"
    answer = upload(api, rows, spec)
    assert answer.status_code == 202, answer.text
    job_view = stack.wait_done(answer.json()["job_id"], 30)
    # Row 103's title, filled, is over Meta's 80 characters: that recipient fails, named.
    assert (job_view["sent"], job_view["failed"], job_view["message_kind"]) == (
        2,
        1,
        "generic_template",
    )
    assert job_view["error_codes"] == {"invalid_message": 1}
    errors = api.get(f"/v1/jobs/{job_view['job_id']}/errors").json()["items"]
    assert [(e["recipient"], e["code"]) for e in errors] == [("103", "invalid_message")]
    assert "elements[0].title" in errors[0]["message"]
    bodies = fake.http.get("/_fake/bodies").json()
    job_id = job_view["job_id"]
    assert bodies == {  # metadata: the job and the recipient's position, for Meta's receipts
        "101": {
            "recipient": {"id": "101"},
            "message": card_for("Ann", "38", "A1"),
            "messaging_type": "UPDATE",
            "metadata": f"fo1:{job_id}:0",
        },
        "102": {
            "recipient": {"id": "102"},
            "message": card_for("Bo", "one size", "B2"),
            "messaging_type": "UPDATE",
            "metadata": f"fo1:{job_id}:1",
        },
    }
    assert fake.stats()["requests"] == 2  # the refused one never went out


def test_utility_template_filled_per_recipient_as_meta_documents(stack: Stack) -> None:
    fake = stack.start_fakegraph()
    api = stack.start_producer()
    stack.start_consumer("c1")
    template = {
        "name": "jaspers_market_order_delivery_update_named_us",
        "language": {"code": "en"},
        "components": [
            {
                "type": "header",
                "parameters": [{"type": "text", "parameter_name": "order_type", "text": "Order"}],
            },
            {
                "type": "body",
                "parameters": [
                    {"type": "text", "parameter_name": "order_id", "text": "{{order}}"},
                    {"type": "text", "parameter_name": "customer_name", "text": "{{name|there}}"},
                ],
            },
            {"type": "buttons", "parameters": [{"type": "POSTBACK", "payload": "track_{{order}}"}]},
        ],
    }
    spec = {"page_id": PAGE, "message": {"template": template}, "messaging_type": "UTILITY"}
    people = [("201", "566701", "John"), ("202", "566702", ""), ("203", "566703", "Ana")]
    rows = "id,order,name\n" + "".join(f"{p},{o},{n}\n" for p, o, n in people)
    answer = upload(api, rows, spec)
    assert answer.status_code == 202, answer.text
    job_view = stack.wait_done(answer.json()["job_id"], 30)
    assert (job_view["sent"], job_view["messaging_type"], job_view["tag"]) == (3, "UTILITY", None)
    assert job_view["message_kind"] == "utility_template"
    bodies = fake.http.get("/_fake/bodies").json()
    for pos, (psid, order, name) in enumerate(people):
        assert bodies[psid] == {
            "metadata": f"fo1:{job_view['job_id']}:{pos}",
            "recipient": {"id": psid},
            "message": {
                "template": {
                    "name": "jaspers_market_order_delivery_update_named_us",
                    "language": {"code": "en"},
                    "components": [
                        {
                            "type": "header",
                            "parameters": [
                                {"type": "text", "text": "Order", "parameter_name": "order_type"}
                            ],
                        },
                        {
                            "type": "body",
                            "parameters": [
                                {"type": "text", "text": order, "parameter_name": "order_id"},
                                {
                                    "type": "text",
                                    "text": name or "there",
                                    "parameter_name": "customer_name",
                                },
                            ],
                        },
                        {
                            "type": "buttons",
                            "parameters": [{"type": "POSTBACK", "payload": f"track_{order}"}],
                        },
                    ],
                }
            },
            "messaging_type": "UTILITY",
        }
    assert len(bodies) == 3 and fake.stats()["requests"] == 3


def test_a_job_written_by_the_text_only_release_is_still_delivered(stack: Stack) -> None:
    """Old and new pods share Redis in a rolling deploy: a job hash with `text` and no
    `message` is sent as the text it names."""
    fake = stack.start_fakegraph()
    stack.start_producer()
    job_id = stack.submit(["301", "302"], message={"text": "Old style"})
    stack.r.hdel(keys.JobKeys.of(job_id).hash, "message", "kind")  # as the old producer wrote
    stack.start_consumer("c1")
    assert stack.wait_done(job_id, 30)["sent"] == 2
    assert fake.http.get("/_fake/texts").json() == {"301": "Old style", "302": "Old style"}
