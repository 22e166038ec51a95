"""A real Prometheus (Debian's, installed by scripts/setup with promtool) scraping a running
fleet, as an SRE checks it: every query of the shipped dashboard returns data while a job is
being sent, every fanout series comes from one kind of process only (no producer zeros beside
the consumers' counts), and the shipped alert rules load and stay quiet on a healthy fleet."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from conftest import Stack, free_port, psids, wait_for

ROOT = Path(__file__).resolve().parent.parent
MONITORING = ROOT / "k8s" / "monitoring"
# What Grafana substitutes in the dashboard's queries.
GRAFANA = {"$namespace": "test", "$__rate_interval": "15s", "$__range": "5m"}


class Prometheus:
    def __init__(self, workdir: Path, targets: dict[str, list[str]]) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            pytest.fail(
                "prometheus is not installed: run scripts/setup --dev (Debian package prometheus)"
            )
        rule = yaml.safe_load((MONITORING / "prometheusrule.yaml").read_text())
        (workdir / "rules.yaml").write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
        jobs = [
            {
                "job_name": component,
                "static_configs": [
                    {
                        "targets": addresses,
                        # what the PodMonitors' podTargetLabels and the namespace give in a cluster
                        "labels": {
                            "namespace": "test",
                            "app_kubernetes_io_component": component,
                            "app_kubernetes_io_part_of": "fanout",
                        },
                    }
                ],
            }
            for component, addresses in targets.items()
        ]
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(workdir / "rules.yaml")],
            "scrape_configs": jobs,
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.port = free_port()
        self.log = open(workdir / "prometheus.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=10)
        wait_for(lambda: self.http.get("/-/ready").status_code == 200, 20, "prometheus ready")

    def query(self, expr: str) -> list[dict[str, Any]]:
        answer = self.http.get("/api/v1/query", params={"query": expr}).json()
        assert answer["status"] == "success", (expr, answer)
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def stop(self) -> None:
        self.http.close()
        self.proc.terminate()
        self.proc.wait(10)
        self.log.close()


def dashboard_queries() -> Iterator[tuple[str, str]]:
    dashboard = json.loads((MONITORING / "fanout-dashboard.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in GRAFANA.items():
                expr = expr.replace(variable, value)
            yield f"{panel['title']} / {target.get('legendFormat', target['refId'])}", expr


def has_data(result: list[dict[str, Any]]) -> bool:
    return any(not math.isnan(float(sample["value"][1])) for sample in result)


def test_a_real_prometheus_sees_every_panel_and_no_duplicate_series(
    stack: Stack, tmp_path: Path
) -> None:
    stack.start_fakegraph("--blocked", "10000000007")  # one failure, for the error-code panel
    stack.env["FANOUT_RATE_LIMIT"] = "150"  # about 10 s of sending: scrapes land mid-job
    api = stack.start_producer()
    ports = [free_port(), free_port()]
    for n, port in enumerate(ports):
        stack.start_consumer(f"c{n}", FANOUT_METRICS_PORT=str(port))
    producer = str(api.base_url).removeprefix("http://").rstrip("/")
    prometheus = Prometheus(
        tmp_path, {"producer": [producer], "consumer": [f"127.0.0.1:{p}" for p in ports]}
    )
    try:
        job_id = stack.submit(psids(1500))
        with api.stream("GET", f"/v1/jobs/{job_id}/events") as events:  # an open SSE stream
            lines = events.iter_lines()  # kept: dropping it would close the stream
            assert next(lines).startswith("event: job")
            wait_for(lambda: stack.job(job_id)["sent"] > 300, 30, "sending")
            # Every target scraped several times since, so every rate() has a slope.
            scrapes = 'min(count_over_time(up{namespace="test"}[10s])) >= 4'
            wait_for(lambda: prometheus.query(scrapes), 30, "four scrapes of each target")
            assert stack.job(job_id)["status"] == "running"  # the panels are read mid-job
            empty = [
                name for name, expr in dashboard_queries() if not has_data(prometheus.query(expr))
            ]
            assert not empty, f"dashboard queries without data: {empty}"
            sse = prometheus.query('fanout_sse_streams{namespace="test"}')
            assert [float(s["value"][1]) for s in sse] == [1.0]

        # Each fanout series comes from one kind of process: a name exported by both the
        # producer and the consumers would be summed with the other's zeros.
        jobs_per_name = prometheus.query(
            'count by (__name__) (count by (__name__, job) ({__name__=~"fanout_.+"}))'
        )
        duplicated = [r["metric"]["__name__"] for r in jobs_per_name if r["value"][1] != "1"]
        assert not duplicated, f"exported by both producer and consumers: {duplicated}"
        names = {r["metric"]["__name__"] for r in jobs_per_name}
        assert {"fanout_jobs", "fanout_messages_total", "fanout_in_flight_seconds_total"} <= names

        # The shipped rules load and evaluate, and a healthy fleet fires none of them.
        rules = prometheus.http.get("/api/v1/rules").json()["data"]["groups"]
        alerts = [r for g in rules for r in g["rules"] if r["type"] == "alerting"]
        assert alerts and all(r["health"] == "ok" for r in alerts), alerts
        firing = [r["name"] for r in alerts if r["state"] == "firing"]
        assert not firing, firing
    finally:
        prometheus.stop()
