"""Listening on a real Redis Cluster (3 masters + 3 replicas on loopback): the receiver's
inbox (and its WAIT for a replica), the receipt scripts in the page's slot, the flips in each
job's slot, and policy enforcement, exactly as on a single Redis."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import PAGE, psids, wait_for
from redis_cluster import Cluster, ClusterStack

pytestmark = pytest.mark.skipif(
    shutil.which("redis-cli") is None, reason="redis-cli is needed to create a cluster"
)
SECRET = "cluster-app-secret-0123456789"


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[ClusterStack]:
    cluster = Cluster(tmp_path)
    s = ClusterStack(cluster)
    s.env["FANOUT_APP_SECRET"] = SECRET
    s.env["FANOUT_WEBHOOK_VERIFY_TOKEN"] = "verify"
    try:
        yield s
    finally:
        s.stop()
        cluster.stop()


def test_receipts_and_enforcement_on_a_cluster(stack: ClusterStack) -> None:
    api = stack.start_producer()
    config = json.dumps({"duplicate_rate": 0.2, "reorder_rate": 0.2})
    stack.start_fakegraph(
        "--webhook-url", f"{api.base_url}/webhooks/messenger", "--webhook-config", config
    )
    stack.start_consumer("c1")
    jobs = [stack.submit(psids(500, offset=i * 1000)) for i in range(3)]  # spread over shards
    for job_id in jobs:
        assert stack.wait_done(job_id, 60)["sent"] == 500
    assert stack.fake is not None

    def settled() -> dict[str, int] | None:
        fake: dict[str, int] = stack.fake.http.get("/_fake/receipts").json()  # type: ignore[union-attr]
        views = [stack.job(j) for j in jobs]
        ours = (sum(v["delivered"] for v in views), sum(v["read"] for v in views))
        done = fake["queued"] == 0 and fake["echoes"] == 1500
        return fake if done and ours == (fake["delivered"], fake["read"]) else None

    fake = wait_for(settled, 30, "delivered/read to match what fakegraph reported")
    assert 0 < fake["read"] < fake["delivered"] < 1500

    stack.fake.configure(latency_ms=500)  # ~6 s of sending: long enough to pause it
    running = stack.submit(psids(3000, offset=50_000))
    wait_for(lambda: stack.job(running)["sent"] > 0, 20, "the job to be sending")
    started = time.monotonic()
    body = {"page_id": PAGE, "action": "block", "reason": "spam (cluster test)"}
    stack.fake.http.post("/_fake/enforcement", json=body).raise_for_status()
    wait_for(lambda: stack.job(running)["status"] == "paused", 5, "the job paused")
    assert time.monotonic() - started < 1.0
