"""``fanout demo``: the whole pipeline on one machine, with a live progress bar.

Starts (and on exit, also on Ctrl-C, stops) a redis-server of its own unless FANOUT_REDIS_URL
is set, fakegraph, the producer and N consumers; submits one job; draws its progress until it
ends; prints the summary next to what fakegraph really received.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from services import progress
from shared.settings import DEFAULT_RATE_LIMIT

PAGE = "1234567890"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(check: Any, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (httpx.HTTPError, OSError):
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not come up within {timeout:.0f}s")


class Services:
    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.tmp = tempfile.TemporaryDirectory(prefix="fanout-demo-")

    def start(self, name: str, args: list[str], env: dict[str, str]) -> None:
        log = open(Path(self.tmp.name) / f"{name}.log", "wb")  # noqa: SIM115 - lives with the process
        proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.procs.append((name, proc))

    def check_alive(self) -> None:
        for name, proc in self.procs:
            if proc.poll() is not None:
                log = (Path(self.tmp.name) / f"{name}.log").read_text(errors="replace")
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{log[-2000:]}")

    def stop(self) -> None:
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for _, proc in reversed(self.procs):
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.tmp.cleanup()


def _redis(services: Services) -> str:
    url = os.environ.get("FANOUT_REDIS_URL")
    if url:
        return url
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed; set FANOUT_REDIS_URL or install it")
    port = _free_port()
    services.start(
        "redis",
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            services.tmp.name,
        ],
        dict(os.environ),
    )
    return f"redis://127.0.0.1:{port}/0"


def run(services: Services, recipients: int, consumers: int, rate: int, stay: bool = False) -> int:
    api_token = secrets.token_urlsafe(24)
    page_token = "EAA" + secrets.token_hex(20)
    python = [sys.executable, "-m"]
    env = {
        **os.environ,
        "FANOUT_REDIS_URL": _redis(services),
        "FANOUT_API_TOKENS": f"demo={api_token}",
        "FANOUT_PAGE_TOKENS": f"{PAGE}={page_token}",
        # Set, not inherited: a binding in the user's shell would name tenants the demo lacks.
        "FANOUT_TENANT_PAGES": f"demo={PAGE}",
        "FANOUT_METRICS_PORT": "0",  # a free port for each consumer
        "FANOUT_LOG_LEVEL": "WARNING",
        # The fake page's limit, set explicitly: fakegraph is no real page, so the demo may show
        # the fleet's speed. A real page gets FANOUT_RATE_LIMIT, 40/s unless configured.
        "FANOUT_PAGE_RATE_LIMITS": f"{PAGE}={rate}",
        # fakegraph plays Meta's webhooks too: echoes, then delivery and read receipts.
        "FANOUT_APP_SECRET": secrets.token_hex(16),
        "FANOUT_WEBHOOK_VERIFY_TOKEN": secrets.token_hex(8),
    }
    env.pop("FANOUT_RATE_LIMIT", None)
    graph_port, api_port = _free_port(), _free_port()
    services.start(
        "fakegraph",
        [
            *python,
            "services.fakegraph",
            "--port",
            str(graph_port),
            "--latency-ms",
            "20",
            "--blocked-rate",
            "0.01",
            "--tokens",
            f"{PAGE}={page_token}",
            "--webhook-url",
            f"http://127.0.0.1:{api_port}/webhooks/messenger",
        ],
        env,
    )
    env["FANOUT_GRAPH_URL"] = f"http://127.0.0.1:{graph_port}"
    services.start("producer", [*python, "services.cli", "producer", "--port", str(api_port)], env)
    for i in range(consumers):
        services.start(f"consumer-{i + 1}", [*python, "services.cli", "consumer"], env)

    api = httpx.Client(
        base_url=f"http://127.0.0.1:{api_port}",
        headers={"Authorization": f"Bearer {api_token}"},
        timeout=30,
    )
    graph = httpx.Client(base_url=env["FANOUT_GRAPH_URL"], timeout=10)
    _wait(lambda: api.get("/readyz").status_code == 200, "the producer")
    _wait(lambda: graph.get("/_fake/stats").status_code == 200, "fakegraph")
    services.check_alive()
    limit = f"{rate}/s" if rate else "no limit"
    print(
        f"fanout demo: {consumers} consumers, fakegraph at 20 ms latency with 1% blocked"
        f" recipients\nrate: the fake page {PAGE} is set to {limit} (--rate,"
        f" FANOUT_PAGE_RATE_LIMITS); a real page gets {DEFAULT_RATE_LIMIT}/s unless configured"
    )

    body = {
        "page_id": PAGE,
        "message": {"text": "Hello from the fanout demo!"},
        "recipients": [str(10**15 + i) for i in range(recipients)],
        "messaging_type": "UPDATE",
    }
    submitted = time.perf_counter()
    answer = api.post("/v1/jobs", json=body)
    answer.raise_for_status()
    accepted = answer.json()
    print(
        f"job {accepted['job_id']} accepted in {time.perf_counter() - submitted:.3f}s "
        f"({accepted['total']:,} recipients)"
    )
    with progress.Display() as display:
        while True:
            job = api.get(accepted["status_url"]).json()
            if job["status"] in ("completed", "failed", "cancelled"):
                display.final(job)
                break
            display.update(job)
            services.check_alive()
            time.sleep(0.1)
    elapsed = time.perf_counter() - submitted
    stats = graph.get("/_fake/stats").json()
    print(
        f"\n{job['status']}: sent {job['sent']:,}, failed {job['failed']:,} "
        f"(codes {job['error_codes'] or '-'}), skipped {job['skipped']:,} of {job['total']:,} "
        f"in {elapsed:.2f}s = {job['total'] / elapsed:,.0f} msg/s\n"
        f"fakegraph received {stats['delivered']:,} messages for {stats['unique']:,} people, "
        f"duplicates {stats['duplicates']}"
    )
    ok = job["status"] == "completed" and stats["delivered"] == job["sent"]
    _watch_receipts(api, graph, accepted["status_url"])
    if stay:
        _stay(services, api_port, api_token, graph_port)
    return 0 if ok else 1


def _stay(services: Services, api_port: int, api_token: str, graph_port: int) -> None:
    """Keep everything running for the job page and the terminal client, until Ctrl-C."""
    print(
        f"\nthe job page: http://127.0.0.1:{api_port}/  (sign in with the API token {api_token})"
        f"\nfrom a terminal: export FANOUT_URL=http://127.0.0.1:{api_port}"
        f" FANOUT_TOKEN={api_token}\n  then e.g. fanout jobs; the page is {PAGE}."
        f" fakegraph (playing Meta) answers at http://127.0.0.1:{graph_port}."
        "\nCtrl-C stops everything.",
        flush=True,
    )
    while True:
        services.check_alive()
        time.sleep(1)


def _watch_receipts(api: httpx.Client, graph: httpx.Client, url: str) -> None:
    """Meta's receipts keep coming after the last send: show sent -> delivered -> read move
    until they match what fakegraph (playing Meta) reported, or 15 s pass."""
    deadline = time.monotonic() + 15
    with progress.TextLine() as shown:
        while True:
            job = api.get(url).json()
            fake = graph.get("/_fake/receipts").json()
            line = (
                f"receipts: sent {job['sent']:,} -> delivered {job['delivered']:,} -> read"
                f" {job['read']:,} (at least; fakegraph reported {fake['delivered']:,} delivered,"
                f" {fake['read']:,} read)"
            )
            settled = fake["queued"] == 0 and (job["delivered"], job["read"]) == (
                fake["delivered"],
                fake["read"],
            )
            if settled or time.monotonic() > deadline:
                shown.final(line)
                return
            shown.update(line)
            time.sleep(0.2)


def main(recipients: int = 10_000, consumers: int = 2, rate: int = 0, stay: bool = False) -> int:
    services = Services()
    try:
        return run(services, recipients, consumers, rate, stay)
    except KeyboardInterrupt:
        print("\ninterrupted; stopping everything", file=sys.stderr)
        return 130
    except RuntimeError as exc:
        print(f"fanout demo: {exc}", file=sys.stderr)
        return 1
    finally:
        services.stop()
