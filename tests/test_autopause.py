"""Auto-pause on a job's failure rate: more than max_failure_rate (default 20%) of the last 500
recipients settled failed for a reason about the person or the message -> the job pauses with
the reason and the top codes; transient answers never count; resume carries on."""

from __future__ import annotations

from typing import Any

from conftest import Stack, psids, wait_for


def test_permanent_failures_pause_the_job_and_resume_carries_on(stack: Stack) -> None:
    stack.start_fakegraph("--blocked-rate", "0.3")  # 551/1545041 for 30% of people, always
    api = stack.start_producer()
    stack.start_consumer("c1")
    job_id = stack.submit(psids(4000))

    def paused() -> dict[str, Any] | None:
        job = stack.job(job_id)
        assert job["status"] not in ("completed", "failed", "cancelled"), job
        return job if job["status"] == "paused" else None

    job = wait_for(paused, 60, "the job to pause itself")
    assert job["auto_paused"] is True and job["max_failure_rate"] == 0.2
    assert job["reason"].startswith("auto-paused: "), job["reason"]
    assert "of the last 500 recipients failed" in job["reason"]
    assert "top codes: 551 (" in job["reason"], job["reason"]
    settled = job["sent"] + job["failed"]
    assert 500 <= settled < 4000 and job["failed"] / settled > 0.2, job
    assert job["error_codes"].keys() == {"551"}

    resumed = api.post(f"/v1/jobs/{job_id}/resume").json()
    assert resumed["status"] == "running" and resumed["reason"] is None
    assert resumed["auto_paused"] is False
    # it sends again, until done or its next 500 trip it again
    later = wait_for(
        lambda: (j := stack.job(job_id))["sent"] + j["failed"] > settled + 100 and j, 60, "more"
    )
    assert later["sent"] + later["failed"] > settled


def test_transient_answers_never_pause(stack: Stack) -> None:
    stack.start_fakegraph("--fail-rate", "0.3")  # HTTP 500 code 2: retried, never counted
    stack.start_producer()
    stack.start_consumer("c1")
    job = stack.wait_done(stack.submit(psids(1500)), 90)
    assert job["status"] == "completed" and job["auto_paused"] is False
    assert job["sent"] + job["failed"] == 1500


def test_max_failure_rate_is_per_job(stack: Stack) -> None:
    stack.start_fakegraph("--blocked-rate", "0.3")
    stack.start_producer()
    stack.start_consumer("c1")
    job = stack.wait_done(stack.submit(psids(1500), max_failure_rate=0.5), 90)
    assert job["status"] == "completed" and job["max_failure_rate"] == 0.5
    assert job["failed"] > 300 and job["auto_paused"] is False
    answer = stack.api.post(  # type: ignore[union-attr]
        "/v1/jobs",
        json={"page_id": "1001", "message": {"text": "x"}, "messaging_type": "UPDATE",
              "recipients": ["1"], "max_failure_rate": 0},
    )  # fmt: skip
    assert answer.status_code == 422 and answer.json()["error"]["field"] == "max_failure_rate"
