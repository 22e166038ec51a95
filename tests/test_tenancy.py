"""Tenancy and start-up conflicts: a page belongs to one tenant (FANOUT_TENANT_PAGES), and a
service that cannot start says so in one line with exit code 2, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from conftest import (
    API_TOKENS,
    OTHER_PAGE,
    PAGE,
    PAGE_TOKEN,
    ROOT,
    Proc,
    Stack,
    free_port,
    psids,
    wait_for,
)

from shared.settings import SettingsError, producer_settings

ACME = {"Authorization": f"Bearer {API_TOKENS['acme']}"}
OTHER = {"Authorization": f"Bearer {API_TOKENS['other']}"}


def snapshot(r: redis.Redis) -> dict[bytes, bytes | None]:
    """Every key with its serialised value: equal snapshots mean nothing was written."""
    return {key: r.dump(key) for key in r.scan_iter("*")}  # type: ignore[misc]


def job(page_id: str, n: int = 5) -> dict[str, Any]:
    return {
        "page_id": page_id,
        "message": {"text": "Hi"},
        "recipients": psids(n),
        "messaging_type": "UPDATE",
    }


def upload(api: httpx.Client, page_id: str, headers: dict[str, str]) -> httpx.Response:
    spec = {"page_id": page_id, "message": {"text": "Hi"}, "messaging_type": "UPDATE"}
    files = {
        "spec": (None, json.dumps(spec)),
        "recipients": ("contacts.csv", b"id\n111\n222\n", "text/csv"),
    }
    return api.post("/v1/jobs", files=files, headers=headers)


def log_lines(proc: Proc) -> list[dict[str, Any]]:
    return [json.loads(line) for line in proc.output().splitlines() if line.startswith("{")]


def test_a_page_that_is_not_the_tenants_is_403_and_writes_nothing(stack: Stack) -> None:
    # 4004 has a token but no tenant: nobody may send as it, and the producer says so at start.
    stack.env["FANOUT_PAGE_TOKENS"] += ",4004=EAAunboundpagetoken0123456789"
    stack.env["FANOUT_TENANT_PAGES"] = f"acme={PAGE},other={OTHER_PAGE}"
    api = stack.start_producer()
    before = snapshot(stack.r)
    refused = [
        ("other, JSON, acme's page", lambda: api.post("/v1/jobs", json=job(PAGE), headers=OTHER)),
        ("other, CSV, acme's page", lambda: upload(api, PAGE, OTHER)),
        ("acme, JSON, other's page", lambda: api.post("/v1/jobs", json=job(OTHER_PAGE))),
        ("acme, CSV, other's page", lambda: upload(api, OTHER_PAGE, ACME)),
        ("acme, JSON, unbound page", lambda: api.post("/v1/jobs", json=job("4004"))),
        ("acme, CSV, unbound page", lambda: upload(api, "4004", ACME)),
        # A page nobody configured answers the same: no tenant learns which pages exist.
        ("acme, JSON, unknown page", lambda: api.post("/v1/jobs", json=job("999"))),
    ]
    for name, send in refused:
        answer = send()
        assert answer.status_code == 403, (name, answer.text)
        error = answer.json()["error"]
        assert (error["code"], error["field"]) == ("page_forbidden", "page_id"), name
    assert snapshot(stack.r) == before
    documented = api.get("/openapi.json").json()["paths"]["/v1/jobs"]["post"]["responses"]
    assert "403" in documented
    # Each tenant can still use its own page, by either route: the 403s were about ownership.
    for headers, page in ((ACME, PAGE), (OTHER, OTHER_PAGE)):
        assert api.post("/v1/jobs", json=job(page), headers=headers).status_code == 202
        assert upload(api, page, headers).status_code == 202
    assert snapshot(stack.r) != before

    producer = stack.procs[-1]
    warnings = [
        line
        for line in log_lines(producer)
        if line["level"] == "warning" and "FANOUT_TENANT_PAGES" in line["msg"]
    ]
    assert [w.get("page_id") for w in warnings] == ["4004"]  # once, and only the unbound one
    assert "EAAunboundpagetoken0123456789" not in producer.output()


def test_a_tenant_never_sees_another_tenants_jobs(stack: Stack) -> None:
    api = stack.start_producer()
    ours = api.post("/v1/jobs", json=job(PAGE)).json()["job_id"]
    theirs = api.post("/v1/jobs", json=job(OTHER_PAGE), headers=OTHER).json()["job_id"]
    listed = {
        tenant: [j["job_id"] for j in api.get("/v1/jobs", headers=headers).json()["items"]]
        for tenant, headers in (("acme", ACME), ("other", OTHER))
    }
    assert listed == {"acme": [ours], "other": [theirs]}
    for job_id, stranger in ((ours, OTHER), (theirs, ACME)):
        for path in ("", "/errors", "/events"):
            answer = api.get(f"/v1/jobs/{job_id}{path}", headers=stranger)
            assert answer.status_code == 404, (path, answer.text)
            assert answer.json()["error"]["code"] == "not_found"
        for action in ("pause", "resume", "cancel"):
            answer = api.post(f"/v1/jobs/{job_id}/{action}", headers=stranger)
            assert answer.status_code == 404, (action, answer.text)
    assert api.get(f"/v1/jobs/{ours}").json()["status"] == "pending"  # nothing was cancelled


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_several_tenants_without_a_binding_refuse_to_start(stack: Stack) -> None:
    env = {k: v for k, v in stack.env.items() if k != "FANOUT_TENANT_PAGES"}
    done = run_cli(env, "producer", "--port", str(free_port()))
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    [line] = done.stderr.splitlines()
    assert line.startswith("fanout producer: FANOUT_TENANT_PAGES is not set"), line
    assert PAGE_TOKEN not in line and API_TOKENS["acme"] not in line
    assert stack.r.dbsize() == 0


@pytest.mark.parametrize(
    ("binding", "message"),
    [
        ("acme=1001,ghost=3003", "FANOUT_TENANT_PAGES: tenant 'ghost' is not in FANOUT_API_TOKENS"),
        ("acme=1001,other=1001", "FANOUT_TENANT_PAGES: page 1001 is bound to both 'acme' and"),
        ("acme=1001|5005", "FANOUT_TENANT_PAGES: page 5005 has no token in FANOUT_PAGE_TOKENS"),
        ("acme=1001,acme=3003", "FANOUT_TENANT_PAGES: tenant 'acme' is named twice"),
        ("acme", "FANOUT_TENANT_PAGES: 'acme' is not tenant=page|page"),
        ("acme=1001|", "FANOUT_TENANT_PAGES: 'acme=1001|' is not tenant=page|page"),
    ],
)
def test_bad_bindings_name_the_variable(binding: str, message: str) -> None:
    env = {
        "FANOUT_API_TOKENS": "acme=t1,other=t2",
        "FANOUT_PAGE_TOKENS": "1001=EAAx,3003=EAAy",
        "FANOUT_TENANT_PAGES": binding,
    }
    with pytest.raises(SettingsError) as raised:
        producer_settings(env)
    assert str(raised.value).startswith(message)
    assert "EAAx" not in str(raised.value) and "t1" not in str(raised.value)


def test_one_tenant_owns_every_page_and_a_binding_owns_only_its_own() -> None:
    alone = producer_settings({"FANOUT_API_TOKENS": "solo=t", "FANOUT_PAGE_TOKENS": "1=a,2=b"})
    assert alone.owns("solo", "1") and alone.owns("solo", "2") and not alone.owns("solo", "3")
    assert alone.unbound_pages() == []
    bound = producer_settings(
        {
            "FANOUT_API_TOKENS": "a=t1,b=t2,c=t3",
            "FANOUT_PAGE_TOKENS": "1=x,2=y,3=z",
            "FANOUT_TENANT_PAGES": "a=1|2",
        }
    )
    assert bound.owns("a", "1") and bound.owns("a", "2")
    assert not bound.owns("b", "1") and not bound.owns("c", "3") and not bound.owns("a", "3")
    assert bound.unbound_pages() == ["3"]


def test_a_second_consumer_on_a_taken_metrics_port_exits_2_in_one_line(stack: Stack) -> None:
    port = free_port()
    first = stack.start_consumer("first", FANOUT_METRICS_PORT=str(port))
    health = f"http://127.0.0.1:{port}/healthz"
    wait_for(lambda: httpx.get(health).status_code == 200, 20, "the first consumer's probes")
    second = run_cli({**stack.env, "FANOUT_METRICS_PORT": str(port)}, "consumer", "--name", "2nd")
    assert second.returncode == 2, second.stderr
    [line] = second.stderr.splitlines()
    assert line.startswith(f"fanout consumer: FANOUT_METRICS_PORT={port}: cannot listen"), line
    assert "Traceback" not in second.stderr and second.stdout == ""
    # It stopped before joining the group, and the first one is untouched.
    assert httpx.get(health).status_code == 200 and first.proc.poll() is None
    groups = stack.r.keys("fanout:*:work")
    names = {c["name"] for g in groups for c in stack.r.xinfo_consumers(g, "senders")}
    assert b"2nd" not in names


def test_a_taken_producer_port_exits_2_in_one_line(stack: Stack) -> None:
    api = stack.start_producer()
    port = str(api.base_url.port)
    done = run_cli(stack.env, "producer", "--port", port)
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.splitlines()
    assert line == f"fanout producer: --port={port}: cannot listen on 127.0.0.1:{port} " + (
        "(Address already in use)"
    )
    assert api.get("/healthz").status_code == 200


def listening_port(proc: Proc, field: str) -> int:
    def port() -> int | None:
        for line in log_lines(proc):
            if line["msg"] in ("probes and metrics listening", "listening") and field in line:
                return int(line[field])
        return None

    return wait_for(port, 20, f"{proc.name} to log its port")


def test_port_0_means_a_free_port_which_is_logged_and_answers(stack: Stack, tmp_path: Path) -> None:
    stack.start_fakegraph()
    stack.start_producer()
    consumers = [stack.start_consumer(name, FANOUT_METRICS_PORT="0") for name in ("c1", "c2")]
    ports = [listening_port(c, "metrics_port") for c in consumers]
    print(f"consumers on one host, FANOUT_METRICS_PORT=0: ports {ports}")
    assert len(set(ports)) == 2 and 0 not in ports
    job_id = stack.submit(psids(20))
    stack.wait_done(job_id, 30)
    sent = 0.0
    for port in ports:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        assert "# TYPE fanout_messages" in text
        sent += sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("fanout_messages_total{") and 'outcome="sent"' in line
        )
    assert sent == 20  # both ports are live consumers, and between them they sent the job

    producer = Proc(
        ["services.cli", "producer", "--port", "0"], dict(stack.env), "producer-0", tmp_path
    )
    stack.procs.append(producer)
    port = listening_port(producer, "port")
    assert httpx.get(f"http://127.0.0.1:{port}/healthz").json() == {"status": "ok"}
