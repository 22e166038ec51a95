"""The shipped alerts (k8s/monitoring/prometheusrule.yaml), unit-tested with ``promtool test
rules``: one test per alert, each with series that must fire it and series that must not.

promtool comes from Debian's ``prometheus`` package, which ``scripts/setup`` installs; without
it these tests fail rather than skip, so CI can never pass them silently.

promtool compares annotations exactly; the descriptions carry ``$value`` (humanized floats),
so the copy of the rules under test keeps each alert's summary (asserted) and drops its
description (still checked for syntax by ``promtool check rules`` on the file as shipped).
"""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

RULE_FILE = Path(__file__).resolve().parent.parent / "k8s" / "monitoring" / "prometheusrule.yaml"
CONSUMER = 'app_kubernetes_io_component="consumer", app_kubernetes_io_part_of="fanout"'
PRODUCER = 'app_kubernetes_io_component="producer", app_kubernetes_io_part_of="fanout"'

Obj = dict[str, Any]


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool is not installed: run scripts/setup --dev (Debian: prometheus)")
    return found


def shipped_groups() -> list[Obj]:
    doc = yaml.safe_load(RULE_FILE.read_text())
    groups: list[Obj] = doc["spec"]["groups"]
    return groups


def rules_under_test(replace: dict[str, str] | None = None) -> Obj:
    groups = copy.deepcopy(shipped_groups())
    for group in groups:
        for rule in group["rules"]:
            rule["annotations"] = {"summary": rule["annotations"]["summary"]}
            if replace and rule["alert"] in replace:
                rule["expr"] = replace[rule["alert"]]
    return {"groups": groups}


def summary(alert: str, **labels: str) -> str:
    """The alert's summary rendered the way Prometheus does ({{ $labels.x }} only)."""
    [text] = [
        r["annotations"]["summary"]
        for g in shipped_groups()
        for r in g["rules"]
        if r["alert"] == alert
    ]
    for name, value in labels.items():
        text = text.replace("{{ $labels." + name + " }}", value)
    assert "{{" not in text, text
    return text


def fired(alert: str, severity: str, **labels: str) -> Obj:
    return {
        "exp_labels": {"severity": severity, **labels},
        "exp_annotations": {"summary": summary(alert, **labels)},
    }


def run_promtool(
    tmp_path: Path, cases: list[Obj], replace: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules_under_test(replace)))
    suite = {"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": cases}
    (tmp_path / "test.yaml").write_text(yaml.safe_dump(suite, sort_keys=False))
    return subprocess.run(
        [promtool(), "test", "rules", "test.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )


def check(tmp_path: Path, cases: list[Obj]) -> None:
    result = run_promtool(tmp_path, cases)
    assert result.returncode == 0, result.stdout + result.stderr


def case(series: dict[str, str], alert: str, at: str, expected: list[Obj]) -> Obj:
    return {
        "interval": "1m",
        "input_series": [{"series": s, "values": v} for s, v in series.items()],
        "alert_rule_test": [{"eval_time": at, "alertname": alert, "exp_alerts": expected}],
    }


# --- the rule file as shipped ------------------------------------------------------------------


def test_promtool_accepts_the_shipped_rule_file(tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": shipped_groups()}))
    result = subprocess.run(
        [promtool(), "check", "rules", "rules.yaml"], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_test_here() -> None:
    shipped = {r["alert"] for g in shipped_groups() for r in g["rules"]}
    tested = {name.removeprefix("test_") for name in globals() if name.startswith("test_")}
    untested = {a for a in shipped if _snake(a) not in tested}
    assert not untested, f"alerts without a promtool test: {sorted(untested)}"


def _snake(alert: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in alert).lstrip("_")


# --- one test per alert ------------------------------------------------------------------------


def test_fanout_stream_lag_growing(tmp_path: Path) -> None:
    alert = "FanoutStreamLagGrowing"
    lag = 'fanout_stream_lag{namespace="prod", shard="0", pod="%s"}'
    check(
        tmp_path,
        [
            # Growing past 100 for over 10 min, seen by two producers: fires once per namespace.
            case(
                {lag % "p1": "50+5x40", lag % "p2": "50+5x40"},
                alert,
                "30m",
                [fired(alert, "warning", namespace="prod")],
            ),
            # Summed across the two producers it would be over 100; each one reads 70 at most.
            case({lag % "p1": "40+1x40", lag % "p2": "40+1x40"}, alert, "30m", []),
            # Large but flat (the fleet keeps up at full speed): no alert.
            case({lag % "p1": "500x40"}, alert, "30m", []),
            # Growing, but not yet for 10 minutes.
            case({lag % "p1": "500x20 500+50x20"}, alert, "25m", []),
        ],
    )


def test_fanout_stream_lag_unknown(tmp_path: Path) -> None:
    alert = "FanoutStreamLagUnknown"
    lag = 'fanout_stream_lag{namespace="prod", shard="%s", pod="p1"}'
    check(
        tmp_path,
        [
            case(
                {lag % "2": "-1x30", lag % "0": "5x30"},
                alert,
                "20m",
                [fired(alert, "warning", namespace="prod", shard="2")],
            ),
            case({lag % "2": "-1x30"}, alert, "10m", []),  # not yet 15 minutes
            case({lag % "2": "0x30"}, alert, "20m", []),
        ],
    )


DEAD_STORED = 'fanout_dead_letters_stored_total{namespace="prod", shard="1", pod="%s"}'
DEAD = 'fanout_dead_letters_total{namespace="prod", pod="%s"}'
# The crash loop: a consumer that dead-letters before its first scrape starts at 1.
DEAD_LETTER_BEFORE_FIRST_SCRAPE = {DEAD % "c1": "0x30", DEAD % "c2": "_x5 1x25"}


def test_fanout_dead_letters(tmp_path: Path) -> None:
    alert = "FanoutDeadLetters"
    prod = [fired(alert, "warning", namespace="prod")]
    check(
        tmp_path,
        [
            case(DEAD_LETTER_BEFORE_FIRST_SCRAPE, alert, "8m", prod),
            # Counted in Redis, read by two producers; the consumer that did it died unscraped.
            case(
                {DEAD_STORED % "p1": "3x5 4x25", DEAD_STORED % "p2": "3x5 4x25"}, alert, "8m", prod
            ),
            # A consumer's counter moving between scrapes, and after a restart in the same pod.
            case({DEAD % "c1": "0x5 1x25"}, alert, "8m", prod),
            case({DEAD % "c1": "3x5 1x25"}, alert, "8m", prod),
            # Old dead letters only: a new producer joining reads the stored count at once, a
            # consumer sits at 0. Quiet, and quiet again 10 minutes after the last event.
            case(
                {DEAD_STORED % "p1": "7x30", DEAD_STORED % "p2": "_x5 7x25", DEAD % "c1": "0x30"},
                alert,
                "20m",
                [],
            ),
            case(DEAD_LETTER_BEFORE_FIRST_SCRAPE, alert, "25m", []),
        ],
    )


def test_fanout_provider_error_ratio_high(tmp_path: Path) -> None:
    alert = "FanoutProviderErrorRatioHigh"
    sent = 'fanout_messages_total{namespace="prod", pod="c1", outcome="sent", code=""}'
    failed = 'fanout_messages_total{namespace="prod", pod="c1", outcome="failed", code="551"}'
    check(
        tmp_path,
        [
            case(
                {sent: "0+700x40", failed: "0+300x40"},
                alert,
                "30m",
                [fired(alert, "warning", namespace="prod")],
            ),
            case({sent: "0+900x40", failed: "0+100x40"}, alert, "30m", []),
            case({sent: "0+700x40", failed: "0+300x40"}, alert, "8m", []),  # not yet for 10m
        ],
    )


UP = 'up{namespace="%s", pod="%s", %s}'
# prod's consumers are down while dev's are up: absent() over all namespaces never fired.
PROD_DOWN_DEV_UP = {
    UP % ("prod", "c1", CONSUMER): "0x20",
    UP % ("prod", "c2", CONSUMER): "0x20",
    UP % ("prod", "p1", PRODUCER): "1x20",
    UP % ("dev", "c1", CONSUMER): "1x20",
}


def test_fanout_no_consumer(tmp_path: Path) -> None:
    alert = "FanoutNoConsumer"
    prod = [fired(alert, "critical", namespace="prod")]
    check(
        tmp_path,
        [
            case(PROD_DOWN_DEV_UP, alert, "10m", prod),
            # prod's consumer pods are gone altogether (no target, no up series).
            case(
                {
                    UP % ("prod", "c1", CONSUMER): "1x5 stale",
                    UP % ("prod", "p1", PRODUCER): "1x30",
                    UP % ("dev", "c1", CONSUMER): "1x30",
                },
                alert,
                "15m",
                prod,
            ),
            # One of two consumers down is not "no consumer".
            case(
                {UP % ("prod", "c1", CONSUMER): "0x20", UP % ("prod", "c2", CONSUMER): "1x20"},
                alert,
                "10m",
                [],
            ),
            case(PROD_DOWN_DEV_UP, alert, "3m", []),  # not yet for 5 minutes
        ],
    )


def test_fanout_chunks_lost(tmp_path: Path) -> None:
    alert = "FanoutChunksLost"
    lost = 'fanout_chunks_lost_total{namespace="prod", pod="%s"}'
    prod = [fired(alert, "critical", namespace="prod")]
    check(
        tmp_path,
        [
            # A consumer started after a failover finds lost entries in its first reclaim pass.
            case({lost % "c1": "0x40", lost % "c2": "_x5 2x35"}, alert, "10m", prod),
            case({lost % "c1": "0x5 3x35"}, alert, "10m", prod),
            case({lost % "c1": "0x40", lost % "c2": "_x5 0x35"}, alert, "10m", []),
        ],
    )


HTTP = (
    'fanout_http_requests_total{namespace="prod", pod="p1", route="%s", method="%s", status="%s"}'
)
# 10% of /v1 calls answer 503 while probes and scrapes, all 200, are 20 times as many.
V1_FAILING_AMID_PROBES = {
    HTTP % ("/v1/jobs", "POST", "202"): "0+90x20",
    HTTP % ("/v1/jobs", "POST", "503"): "0+10x20",
    HTTP % ("/healthz", "GET", "200"): "0+1000x20",
    HTTP % ("/metrics", "GET", "200"): "0+1000x20",
}


def test_fanout_api_server_errors(tmp_path: Path) -> None:
    alert = "FanoutApiServerErrors"
    check(
        tmp_path,
        [
            case(V1_FAILING_AMID_PROBES, alert, "15m", [fired(alert, "warning", namespace="prod")]),
            case(
                {
                    HTTP % ("/v1/jobs/{job_id}", "GET", "200"): "0+99x20",
                    HTTP % ("/v1/jobs/{job_id}", "GET", "500"): "0+1x20",
                },
                alert,
                "15m",
                [],
            ),
            # A failing probe route alone is not what callers get.
            case(
                {
                    HTTP % ("/readyz", "GET", "503"): "0+10x20",
                    HTTP % ("/v1/jobs", "GET", "200"): "0+10x20",
                },
                alert,
                "15m",
                [],
            ),
        ],
    )


HELD = 'fanout_pages_held{namespace="prod", pod="%s", cause="%s"}'


def test_fanout_page_restricted(tmp_path: Path) -> None:
    alert = "FanoutPageRestricted"
    check(
        tmp_path,
        [
            case(
                {
                    HELD % ("c1", "page_restricted"): "0x3 1x20",
                    HELD % ("c2", "page_restricted"): "0x23",
                },
                alert,
                "10m",
                [fired(alert, "critical", namespace="prod")],
            ),
            case({HELD % ("c1", "provider_outage"): "1x20"}, alert, "10m", []),
            case({HELD % ("c1", "page_restricted"): "0x8 1x3 0x10"}, alert, "15m", []),  # lifted
        ],
    )


def test_fanout_provider_outage(tmp_path: Path) -> None:
    alert = "FanoutProviderOutage"
    check(
        tmp_path,
        [
            case(
                {HELD % ("c1", "provider_outage"): "1x30"},
                alert,
                "15m",
                [fired(alert, "warning", namespace="prod")],
            ),
            # A short outage the breaker rides out: probed, recovered, quiet.
            case({HELD % ("c1", "provider_outage"): "1x5 0x25"}, alert, "15m", []),
        ],
    )


def test_fanout_webhook_inbox_growing(tmp_path: Path) -> None:
    alert = "FanoutWebhookInboxGrowing"
    inbox = 'fanout_inbox_backlog{namespace="prod", pod="%s", shard="%s"}'
    check(
        tmp_path,
        [
            case(
                {inbox % ("p1", "0"): "800x30", inbox % ("p1", "1"): "400x30"},
                alert,
                "15m",
                [fired(alert, "warning", namespace="prod")],
            ),
            # Two producers read the same inbox: 700 is not 1400.
            case({inbox % ("p1", "0"): "700x30", inbox % ("p2", "0"): "700x30"}, alert, "15m", []),
        ],
    )


# --- the cases the old rules missed: the tests above would have caught them ------------------

OLD_RULES = {
    "FanoutNoConsumer": "absent(up{" + CONSUMER + "} == 1)",
    "FanoutDeadLetters": "sum by (namespace) (increase(fanout_dead_letters_total[10m])) > 0",
    "FanoutApiServerErrors": (
        'sum by (namespace) (rate(fanout_http_requests_total{status=~"5.."}[5m]))'
        " / sum by (namespace) (rate(fanout_http_requests_total[5m])) > 0.05"
    ),
}


@pytest.mark.parametrize(
    ("alert", "series", "at"),
    [
        ("FanoutNoConsumer", PROD_DOWN_DEV_UP, "10m"),
        ("FanoutDeadLetters", DEAD_LETTER_BEFORE_FIRST_SCRAPE, "8m"),
        ("FanoutApiServerErrors", V1_FAILING_AMID_PROBES, "15m"),
    ],
)
def test_the_old_rule_misses_what_the_new_one_catches(
    tmp_path: Path, alert: str, series: dict[str, str], at: str
) -> None:
    severity = "critical" if alert == "FanoutNoConsumer" else "warning"
    cases = [case(series, alert, at, [fired(alert, severity, namespace="prod")])]
    check(tmp_path, cases)
    old = run_promtool(tmp_path, cases, replace={alert: OLD_RULES[alert]})
    assert old.returncode != 0 and "FAILED" in old.stdout + old.stderr, old.stdout
