"""The logs of a whole job, as an operator reads them: a start-up line per service with its
effective settings (secrets as ***), an audit line for every change a person makes and every
refused request, a job-end line with counts and duration, and no terminal colour codes."""

from __future__ import annotations

import json
import time
from typing import Any

from conftest import API_TOKENS, OTHER_PAGE, PAGE, PAGE_TOKEN, Stack, psids, wait_for

Line = dict[str, Any]


def json_lines(text: str) -> list[Line]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def one(lines: list[Line], **match: Any) -> Line:
    found = [line for line in lines if all(line.get(k) == v for k, v in match.items())]
    assert len(found) == 1, (match, found)
    return found[0]


def test_a_whole_job_in_the_logs(stack: Stack) -> None:
    stack.start_fakegraph()
    api = stack.start_producer()
    consumer = stack.start_consumer("c1")
    done = stack.wait_done(stack.submit(psids(120)), 30)
    # A job sent at a later time cannot start: paused, resumed and cancelled by hand.
    later = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
    held = stack.submit(psids(50, offset=500), send_at=later)
    for action in ("pause", "resume", "cancel"):
        assert api.post(f"/v1/jobs/{held}/{action}").status_code == 200
    # Refusals: a wrong token, a field out of bounds, someone else's page, an unknown job.
    wrong = {"Authorization": "Bearer " + API_TOKENS["acme"] + "x"}
    assert api.get(f"/v1/jobs/{held}", headers=wrong).status_code == 401
    assert api.get("/v1/jobs", params={"limit": "0"}).status_code == 422
    body = {"page_id": OTHER_PAGE, "message": {"text": "hi"}, "recipients": ["1"]}
    assert api.post("/v1/jobs", json={**body, "messaging_type": "UPDATE"}).status_code == 403
    assert api.get("/v1/jobs/0-000000000000000000000000").status_code == 404

    producer_out = stack.procs[1].output()
    wait_for(lambda: "job ended" in consumer.output(), 10, "the consumer's job-end line")
    producer, consuming = json_lines(producer_out), json_lines(consumer.output())

    for lines, service in ((producer, "producer"), (consuming, "consumer")):
        settings = one(lines, msg="starting")["settings"]
        assert settings["log_level"] == "INFO" and settings["shards"] == 2
        tokens = settings["api_tokens"] if service == "producer" else settings["page_tokens"]
        assert tokens and set(tokens.values()) == {"***"}, tokens
    assert one(producer, msg="starting")["settings"]["tenant_pages"]["acme"] == [PAGE]

    submitted = one(producer, msg="job submitted", job_id=done["job_id"])
    assert (submitted["tenant"], submitted["result"], submitted["total"]) == (
        "acme",
        "accepted",
        120,
    )
    assert submitted["audit"] is True
    assert one(producer, msg="job paused", job_id=held)["tenant"] == "acme"
    assert one(producer, msg="job resumed", job_id=held)["result"] == "scheduled"
    assert one(producer, msg="job cancelled", job_id=held)["result"] == "cancelled"

    refused = [line for line in producer if line["msg"] == "request refused"]
    by_status = {line["status"]: line for line in refused}
    assert by_status[401]["route"] == "/v1/jobs/{job_id}" and by_status[401]["tenant"] is None
    assert (by_status[422]["code"], by_status[422]["field"]) == ("invalid_field", "limit")
    assert (by_status[403]["code"], by_status[403]["tenant"]) == ("page_forbidden", "acme")
    assert by_status[404]["route"] == "/v1/jobs/{job_id}"  # a template: ids stay out

    ended = one(consuming, msg="job ended", job_id=done["job_id"])
    assert (ended["status"], ended["sent"], ended["total"], ended["tenant"]) == (
        "completed",
        120,
        120,
        "acme",
    )
    assert ended["duration_s"] >= ended["sending_s"] >= 0
    cancelled = one(producer, msg="job ended", job_id=held)
    assert (cancelled["status"], cancelled["skipped"]) == ("cancelled", 50)

    for text in (producer_out, consumer.output()):
        assert "\x1b" not in text and "\\u001b" not in text and "color_message" not in text
        assert PAGE_TOKEN not in text and API_TOKENS["acme"] not in text


def test_a_job_cancelled_mid_send_ends_once_with_its_final_counts(stack: Stack) -> None:
    """Cancelled while chunks are in flight, a job is over only when the last one is in: one
    job-end line in the whole fleet, written then, with counts that add up."""
    stack.start_fakegraph()
    stack.env["FANOUT_RATE_LIMIT"] = "200"  # 2,000 recipients: about 10 s of sending
    api = stack.start_producer()
    consumers = [stack.start_consumer("c1"), stack.start_consumer("c2")]
    job_id = stack.submit(psids(2000))
    wait_for(lambda: stack.job(job_id)["sent"] > 100, 30, "sending under way")
    assert api.post(f"/v1/jobs/{job_id}/cancel").status_code == 200
    job = stack.wait_done(job_id, 30)
    assert job["status"] == "cancelled" and job["skipped"] > 0
    assert job["sent"] + job["failed"] + job["skipped"] == 2000

    def ended_lines() -> list[Line]:
        outputs = [stack.procs[1].output(), *(c.output() for c in consumers)]
        return [
            line
            for text in outputs
            for line in json_lines(text)
            if line["msg"] == "job ended" and line["job_id"] == job_id
        ]

    [ended] = wait_for(ended_lines, 10, "the job-end line")
    assert (ended["status"], ended["total"]) == ("cancelled", 2000)
    assert (ended["sent"], ended["failed"], ended["skipped"]) == (
        job["sent"],
        job["failed"],
        job["skipped"],
    )
    assert ended["reason"] == "cancelled by request"
    one(json_lines(stack.procs[1].output()), msg="job cancelled", job_id=job_id)
