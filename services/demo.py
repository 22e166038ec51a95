"""``fanout demo``: the whole pipeline on one machine, with a live progress bar.

Starts (and on exit, also on Ctrl-C, stops) a redis-server of its own unless FANOUT_REDIS_URL
is set, fakegraph, the producer and N consumers; submits one job; draws its progress until it
ends; prints the summary next to what fakegraph really received. ``--channel whatsapp`` sends
an approved template from a demo WhatsApp number instead of a text from a page, fakegraph
playing the Cloud API (its per-number throughput, its status webhooks).
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
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from services import progress
from shared.settings import DEFAULT_RATE_LIMIT, DEFAULT_WA_RATE_LIMIT

PAGE = "1234567890"
NUMBER = "106540352242922"  # the demo's WhatsApp number (a phone_number_id)
WA_CEILING = 1000  # messages/s of an upgraded number: the demo's default (--rate 0)


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


def _whatsapp(env: dict[str, str], rate: int) -> list[str]:
    """The demo number's settings (its token, its rate, an unlimited tier: the demo's people
    are all new, and a new business's 250 would refuse them) and fakegraph's WhatsApp flags."""
    for name in [name for name in env if name.startswith("FANOUT_WA_")]:
        del env[name]  # the user's shell configures real numbers, not the demo's
    env["FANOUT_WA_NUMBERS"] = f"{NUMBER}=EAA{secrets.token_hex(20)}"
    env["FANOUT_TENANT_PAGES"] = f"demo={PAGE}|{NUMBER}"
    env["FANOUT_WA_RATE_LIMITS"] = f"{NUMBER}={rate or WA_CEILING}"
    env["FANOUT_WA_TIERS"] = f"{NUMBER}=unlimited"
    throughput = ["--wa-throughput", str(rate)] if rate else []  # Meta's 130429 beyond it
    return ["--wa-tokens-env", "FANOUT_WA_NUMBERS", *throughput]


def _job(channel: str, recipients: int) -> dict[str, Any]:
    if channel == "whatsapp":
        template = {
            "name": "demo_welcome",
            "language": {"code": "en_US"},
            "components": [
                {"type": "body", "parameters": [{"type": "text", "text": "{{name|there}}"}]}
            ],
        }
        return {
            "channel": "whatsapp",
            "phone_number_id": NUMBER,
            "message": {"template": template},
            "recipients": [f"+1555{i:07d}" for i in range(recipients)],  # E.164
        }
    return {
        "page_id": PAGE,
        "message": {"text": "Hello from the fanout demo!"},
        "recipients": [str(10**15 + i) for i in range(recipients)],
        "messaging_type": "UPDATE",
    }


def run(
    services: Services,
    recipients: int,
    consumers: int,
    rate: int,
    stay: bool = False,
    channel: str = "messenger",
) -> int:
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
    wa_flags = _whatsapp(env, rate) if channel == "whatsapp" else []
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
            "--wa-webhook-url",
            f"http://127.0.0.1:{api_port}/webhooks/whatsapp",
            *wa_flags,
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
    if channel == "whatsapp":
        print(
            f"fanout demo: {consumers} consumers, fakegraph playing the WhatsApp Cloud API at 20 ms"
            f" latency\nrate: the fake number {NUMBER} is set to {rate or WA_CEILING}/s (--rate,"
            f" FANOUT_WA_RATE_LIMITS); a real number gets {DEFAULT_WA_RATE_LIMIT}/s unless"
            " configured; its tier is set to unlimited (FANOUT_WA_TIERS)"
        )
    else:
        print(
            f"fanout demo: {consumers} consumers, fakegraph at 20 ms latency with 1% blocked"
            f" recipients\nrate: the fake page {PAGE} is set to {limit} (--rate,"
            f" FANOUT_PAGE_RATE_LIMITS); a real page gets {DEFAULT_RATE_LIMIT}/s unless configured"
        )

    body = _job(channel, recipients)
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
    print(
        f"\n{job['status']}: sent {job['sent']:,}, failed {job['failed']:,} "
        f"(codes {job['error_codes'] or '-'}), skipped {job['skipped']:,} of {job['total']:,} "
        f"in {elapsed:.2f}s = {job['total'] / elapsed:,.0f} msg/s"
    )
    if channel == "whatsapp":
        received = _whatsapp_received(graph)
        _watch_receipts(api, graph, accepted["status_url"], "wa_")
    else:
        received = _received(graph)
        _watch_receipts(api, graph, accepted["status_url"])
    ok = job["status"] == "completed" and received == job["sent"]
    if stay:
        sender = f"number is {NUMBER}" if channel == "whatsapp" else f"page is {PAGE}"
        _stay(services, api_port, api_token, graph_port, sender)
    return 0 if ok else 1


def _received(graph: httpx.Client) -> int:
    stats = graph.get("/_fake/stats").json()
    print(
        f"fakegraph received {stats['delivered']:,} messages for {stats['unique']:,} people, "
        f"duplicates {stats['duplicates']}"
    )
    return int(stats["delivered"])


def _whatsapp_received(graph: httpx.Client) -> int:
    stats = graph.get("/_fake/whatsapp").json()
    sends = stats["sends"]  # [received at, number, to, type]
    people = {send[2] for send in sends}
    busiest = max(Counter(int(send[0]) for send in sends).values(), default=0)
    print(
        f"fakegraph received {len(sends):,} WhatsApp messages for {len(people):,} people,"
        f" duplicates {len(sends) - len(people)}, at most {busiest:,} in one second;"
        f" pair-limit violations {stats['pair_violations']}"
    )
    return len(sends)


def _stay(services: Services, api_port: int, api_token: str, graph_port: int, sender: str) -> None:
    """Keep everything running for the job page and the terminal client, until Ctrl-C."""
    print(
        f"\nthe job page: http://127.0.0.1:{api_port}/  (sign in with the API token {api_token})"
        f"\nfrom a terminal: export FANOUT_URL=http://127.0.0.1:{api_port}"
        f" FANOUT_TOKEN={api_token}\n  then e.g. fanout jobs; the {sender}."
        f" fakegraph (playing Meta) answers at http://127.0.0.1:{graph_port}."
        "\nCtrl-C stops everything.",
        flush=True,
    )
    while True:
        services.check_alive()
        time.sleep(1)


def _watch_receipts(api: httpx.Client, graph: httpx.Client, url: str, kind: str = "") -> None:
    """Meta's receipts keep coming after the last send: show sent -> delivered -> read move
    until they match what fakegraph (playing Meta) reported, or 15 s pass. ``kind``: "" for
    Messenger's receipts, "wa_" for WhatsApp's statuses (fakegraph counts them apart)."""
    deadline = time.monotonic() + 15
    with progress.TextLine() as shown:
        while True:
            job = api.get(url).json()
            fake = graph.get("/_fake/receipts").json()
            delivered, read = fake[f"{kind}delivered"], fake[f"{kind}read"]
            line = (
                f"receipts: sent {job['sent']:,} -> delivered {job['delivered']:,} -> read"
                f" {job['read']:,} (at least; fakegraph reported {delivered:,} delivered,"
                f" {read:,} read)"
            )
            settled = fake["queued"] == 0 and (job["delivered"], job["read"]) == (delivered, read)
            if settled or time.monotonic() > deadline:
                shown.final(line)
                return
            shown.update(line)
            time.sleep(0.2)


def main(
    recipients: int = 10_000,
    consumers: int = 2,
    rate: int = 0,
    stay: bool = False,
    channel: str = "messenger",
) -> int:
    services = Services()
    try:
        return run(services, recipients, consumers, rate, stay, channel)
    except KeyboardInterrupt:
        print("\ninterrupted; stopping everything", file=sys.stderr)
        return 130
    except RuntimeError as exc:
        print(f"fanout demo: {exc}", file=sys.stderr)
        return 1
    finally:
        services.stop()
