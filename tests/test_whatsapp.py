"""WhatsApp end to end (issue 17): the same jobs, ledger and fleet as Messenger, through the
provider contract (shared/providers), on real processes: Redis, fakegraph playing the Cloud
API as Meta documents it (services/fakegraph/whatsapp.py;
https://developers.facebook.com/docs/whatsapp/cloud-api/reference/messages), the producer and
two consumers.

Run with ``-s`` for the figures the issue's note quotes (sends/s per number held, pair-limit
violations).
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import httpx
import pytest
from conftest import PAGE, PAGE_TOKEN, FakeGraph, Stack, most_in_any_second, psids, wait_for

from shared import webhooks
from shared.providers import Provider, messenger, provider_for, whatsapp

NUMBER = "106540352242922"  # a phone_number_id, as Meta's examples spell them
NUMBER_TOKEN = "EAAwhatsappnumbertoken0123456789"
RATE = 80  # Meta's default throughput per number, and FANOUT_WA_RATE_LIMIT's
TEMPLATE: dict[str, Any] = {
    "template": {
        "name": "order_shipped",
        "language": {"code": "en_US"},
        "components": [
            {
                "type": "body",
                "parameters": [
                    {"type": "text", "text": "{{first_name}}"},
                    {"type": "text", "text": "{{order}}"},
                ],
            },
            {
                "type": "button",
                "sub_type": "url",
                "index": "0",
                "parameters": [{"type": "text", "text": "{{order}}"}],
            },
        ],
    }
}

# Both implementations satisfy the contract (checked by mypy, where a missing method fails).
_CONTRACT: tuple[Provider, ...] = (messenger.PROVIDER, whatsapp.PROVIDER)


def test_the_channel_picks_the_provider() -> None:
    assert provider_for(None) is messenger.PROVIDER  # jobs from before channels
    assert provider_for("") is messenger.PROVIDER
    assert provider_for("whatsapp") is whatsapp.PROVIDER
    assert [p.sender_field for p in _CONTRACT] == ["page_id", "phone_number_id"]
    assert messenger.PROVIDER.path("v21.0", PAGE) == "/v21.0/me/messages"
    assert whatsapp.PROVIDER.path("v21.0", NUMBER) == f"/v21.0/{NUMBER}/messages"


def _people(n: int, offset: int = 0) -> list[str]:
    return [str(447700900000 + offset + i) for i in range(n)]


def _start(stack: Stack, throughput: int = RATE, **env: str) -> FakeGraph:
    """Redis, fakegraph answering for the page and the number (at most ``throughput`` sends per
    wall-clock second for the number, as Meta: 130429 beyond), a producer and two consumers."""
    stack.env["FANOUT_WA_NUMBERS"] = f"{NUMBER}={NUMBER_TOKEN}"
    stack.env["FANOUT_TENANT_PAGES"] = f"acme={PAGE}|{NUMBER}"
    stack.env["FANOUT_WA_TIERS"] = f"{NUMBER}=unlimited"
    stack.env.update(env)
    tokens = f"{PAGE}={PAGE_TOKEN},{NUMBER}={NUMBER_TOKEN}"
    fake = stack.fake = FakeGraph(stack.procs, stack.env, stack.logdir, "--tokens", tokens)
    stack.env["FANOUT_GRAPH_URL"] = fake.url
    fake.configure(wa_numbers=[NUMBER], wa_throughput=throughput)
    stack.start_producer()
    started = [stack.start_consumer(f"c{i}") for i in range(2)]

    def reading() -> bool:  # the whole fleet is there before the first job
        return all('"consumer started"' in proc.output() for proc in started)

    wait_for(reading, 30, "the consumers to start")
    return fake


def _upload(api: httpx.Client, people: list[str], message: dict[str, Any]) -> str:
    """A CSV job: id (with a leading + on every other row, dropped at submit), first_name, order."""
    rows = ["id,first_name,order"]
    rows += [f"{'+' if i % 2 else ''}{p},Ann{i},A-{i:05d}" for i, p in enumerate(people)]
    spec = {"channel": "whatsapp", "phone_number_id": NUMBER, "message": message}
    csv_bytes = ("\n".join(rows) + "\n").encode()
    files: dict[str, tuple[str | None, bytes | str, str | None]] = {
        "spec": (None, json.dumps(spec), None),
        "recipients": ("contacts.csv", csv_bytes, "text/csv"),
    }
    answer = api.post("/v1/jobs", files=files)
    assert answer.status_code == 202, answer.text
    job_id: str = answer.json()["job_id"]
    return job_id


def _submit(api: httpx.Client, people: list[str]) -> str:
    body = {"channel": "whatsapp", "phone_number_id": NUMBER, "recipients": people}
    answer = api.post("/v1/jobs", json={**body, "message": {"text": {"body": "Hello"}}})
    assert answer.status_code == 202, answer.text
    job_id: str = answer.json()["job_id"]
    return job_id


def _wa(fake: FakeGraph) -> dict[str, Any]:
    data: dict[str, Any] = fake.http.get("/_fake/whatsapp").json()
    return data


def _refused(fake: FakeGraph) -> dict[str, dict[str, int]]:
    data: dict[str, dict[str, int]] = fake.http.get("/_fake/refused").json()
    return data


def test_busiest_second_slides() -> None:
    assert most_in_any_second([]) == 0
    assert most_in_any_second([0.0, 0.5, 0.99, 1.0, 1.2]) == 4  # [0.5, 1.5) holds four
    assert most_in_any_second([0.0, 1.0, 2.0]) == 1


def _expected_body(job_id: str, position: int, to: str) -> dict[str, Any]:
    """Meta's send body for the template filled from the person's CSV row."""
    name, order = f"Ann{position}", f"A-{position:05d}"
    return {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": to,
        "type": "template",
        "template": {
            "name": "order_shipped",
            "language": {"code": "en_US"},
            "components": [
                {
                    "type": "body",
                    "parameters": [
                        {"type": "text", "text": name},
                        {"type": "text", "text": order},
                    ],
                },
                {
                    "type": "button",
                    "sub_type": "url",
                    "index": "0",
                    "parameters": [{"type": "text", "text": order}],
                },
            ],
        },
        "biz_opaque_callback_data": webhooks.metadata(job_id, position),
    }


@pytest.mark.timeout(150)
def test_a_template_to_3000_people_holds_the_number_rate_fleet_wide(stack: Stack) -> None:
    """A personalised template from a CSV to 3,000 people through two consumers at the
    number's 80/s: fakegraph's own receive times never hold more than 80 in any second, every
    body is Meta's shape filled from the person's row, and the job's counters equal what the
    stand-in accepted (each person once, no 130429, no pair-limit violation). A Messenger job
    beside it in the same fleet goes to its own endpoint, with its page's token, body shape
    and (unlimited) rate."""
    fake = _start(stack)
    assert stack.api is not None
    people, fans = _people(3000), psids(300)
    job_id = _upload(stack.api, people, TEMPLATE)
    messenger_job = stack.submit(fans)  # no channel: Messenger, as every job before
    job = stack.wait_done(job_id, timeout=120)
    assert job["status"] == "completed"
    assert job["channel"] == "whatsapp" and job["phone_number_id"] == NUMBER
    assert (job["sent"], job["failed"], job["skipped"], job["indoubt"]) == (3000, 0, 0, 0)

    seen = _wa(fake)
    sends = [(float(t), n, to, kind) for t, n, to, kind in seen["sends"]]
    assert seen["accepted"] == job["sent"] == len(sends)
    assert sorted(to for _, _, to, _ in sends) == sorted(people)  # each person exactly once
    assert {(n, kind) for _, n, _, kind in sends} == {(NUMBER, "template")}
    assert _refused(fake) == {}  # not one 130429 (nor any other refusal)
    assert seen["pair_violations"] == 0

    bodies: dict[str, Any] = fake.http.get("/_fake/bodies").json()
    for position, person in enumerate(people):
        assert bodies[person] == _expected_body(job_id, position, person), person

    m = stack.wait_done(messenger_job)
    assert (m["channel"], m["sent"], m["failed"], m["skipped"]) == ("messenger", 300, 0, 0)
    delivered = fake.delivered()
    assert delivered[PAGE] == dict.fromkeys(fans, 1)
    assert delivered[NUMBER] == dict.fromkeys(people, 1)
    assert bodies[fans[7]] == {
        "recipient": {"id": fans[7]},
        "message": {"text": "Hello from fanout"},
        "messaging_type": "UPDATE",
        "metadata": webhooks.metadata(messenger_job, 7),
    }

    times = [t for t, _, _, _ in sends]
    per_second = Counter(int(t) for t in times)  # by wall-clock second, as Meta counts
    busiest = max(per_second.values())
    sliding = most_in_any_second(times)
    span = max(times) - min(times)
    print(
        f"\nWA-FIGURES sends/s per number held: busiest wall-clock second {busiest} "
        f"(limit {RATE}), busiest sliding 1 s window {sliding}, mean {len(times) / span:.1f}/s "
        f"over {span:.1f} s, 2 consumers, 3000 sends"
    )
    print(f"WA-FIGURES pair-limit violations: {seen['pair_violations']}")
    assert busiest <= RATE
    # Paced, not merely lucky: 3,000 sends at 80/s take at least 36.5 s end to end.
    assert span >= (len(times) - RATE) / RATE


@pytest.mark.timeout(120)
def test_spam_limit_pauses_and_undeliverable_people_are_suppressed(stack: Stack) -> None:
    """131026 (undeliverable) fails the person and suppresses them on the number: the next job
    skips them with the suppression reason, never asking Meta again. 131048 (spam rate limit)
    mid-job pauses the job with the reason; the counters equal what the stand-in accepted."""
    fake = _start(stack, throughput=0, FANOUT_WA_RATE_LIMIT="0")  # about answers, not pace
    assert stack.api is not None
    api = stack.api
    gone = _people(5)
    first_people = _people(200)
    fake.configure(wa_errors=dict.fromkeys(gone, 131026))
    first = stack.wait_done(_submit(api, first_people), timeout=60)
    assert first["status"] == "completed"
    assert (first["sent"], first["failed"], first["skipped"]) == (195, 5, 0)
    assert _refused(fake) == {"131026": dict.fromkeys(gone, 1)}
    errors = api.get(f"/v1/jobs/{first['job_id']}/errors").json()
    failed = {e["recipient"]: e["code"] for e in errors["items"]}
    assert failed == dict.fromkeys(gone, "131026")
    assert _wa(fake)["accepted"] == 195

    # The next job: the five are skipped at dispatch; after 100 more accepted sends the stand-in
    # answers 131048 to every send, and the job pauses with Meta's reason.
    fake.configure(wa_spam_after=195 + 100)
    second_people = gone + _people(300, offset=1000)
    second_id = _submit(api, second_people)

    def paused() -> dict[str, Any] | None:
        job = stack.job(second_id)
        return job if job["status"] == "paused" else None

    job = wait_for(paused, 60, "the job to pause on 131048")
    assert job is not None
    assert job["reason"].startswith("page_restricted: Meta answered 131048: "), job["reason"]
    assert job["page_hold"] == "page_restricted"  # the number sends nothing until resumed
    # Sends accepted before the pause are recorded in batches: the job's sent count reaches
    # what the stand-in accepted (and a wrong count times out here).
    accepted_second = _wa(fake)["accepted"] - 195
    wait_for(lambda: stack.job(second_id)["sent"] == accepted_second, 10, "sent == accepted")
    job = stack.job(second_id)
    assert accepted_second == 100  # the stand-in's spam limit, exactly
    assert job["skipped"] == 5 and job["skipped_reasons"] == {"suppressed": 5}
    assert job["failed"] == 0  # a pause holds people back unsent; it fails no one
    refused = _refused(fake)
    assert refused["131026"] == dict.fromkeys(gone, 1)  # never asked again
    assert refused["131048"]  # what was in flight when the limit hit, held back unsent
    assert len(refused["131048"]) <= job["total"] - job["sent"] - job["skipped"]
    reached = {to for _, _, to, _ in _wa(fake)["sends"]}
    assert not reached & set(gone)
    assert sum(job[k] for k in ("sent", "failed", "skipped")) < job["total"]  # rest waits
