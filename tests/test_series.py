"""The job page's data: sent/failed per second and per minute from the job's bounded series
hash (GET /v1/jobs/{id}/series), and the tenant's pages (GET /v1/pages)."""

from __future__ import annotations

import httpx
from conftest import API_TOKENS, PAGE, Stack, psids

from services.producer.series import parse
from shared import keys


def test_series_adds_up_to_the_counters(stack: Stack) -> None:
    ids = psids(1200)
    stack.start_fakegraph("--blocked", ",".join(ids[:30]))
    api = stack.start_producer()
    stack.start_consumer("c1")
    job_id = stack.submit(ids)
    job = stack.wait_done(job_id)
    series = api.get(f"/v1/jobs/{job_id}/series").json()
    for name in ("seconds", "minutes"):
        buckets = series[name]
        assert buckets == sorted(buckets) and buckets, series
        assert sum(b[1] for b in buckets) == job["sent"] == 1170
        assert sum(b[2] for b in buckets) == job["failed"] == 30
    assert all(b[0] % 60 == 0 for b in series["minutes"])
    with httpx.Client(
        base_url=str(api.base_url), headers={"Authorization": f"Bearer {API_TOKENS['other']}"}
    ) as other:
        assert other.get(f"/v1/jobs/{job_id}/series").status_code == 404
    assert api.get("/v1/pages").json() == {"items": [{"page_id": PAGE}]}
    assert stack.r.exists(keys.JobKeys.of(job_id).series)


def test_the_ring_keeps_only_the_last_hour() -> None:
    now = 1_800_000_000
    raw = {
        b"s:0": f"{now - 3600}:5:1:0:0".encode(),  # an hour old: left out
        b"s:1": f"{now - 10}:7:0:3:1".encode(),
        b"s:2": f"{now - 9}:2:1".encode(),  # sent and failed only
        b"m:30000000:s": b"12",
        b"m:30000000:f": b"1",
        b"m:30000000:d": b"4",
        b"m:30000000:r": b"2",
    }
    series = parse(raw, now)
    assert series.seconds == [(now - 10, 7, 0, 3, 1), (now - 9, 2, 1, 0, 0)]
    assert series.minutes == [(30000000 * 60, 12, 1, 4, 2)]
