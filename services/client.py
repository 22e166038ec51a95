"""``fanout send|status|jobs|pause|resume|cancel``: the API from a terminal.

Server and token come from ``--url``/``--token`` or FANOUT_URL/FANOUT_TOKEN. Every failure is
one line on stderr and a non-zero exit: 2 for bad usage or input, 3 when the server cannot be
reached, 4 when it refuses (bad token, unknown job, bad CSV: its message is shown as is).
``--json`` prints the API's JSON instead of text, for scripts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ENDED = ("completed", "failed", "cancelled")


class CliError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def progress_line(job: dict[str, Any], width: int = 30) -> str:
    """One line: a bar, the share done, counts, rate and ETA."""
    total = max(1, job["total"])
    done = job["sent"] + job["failed"] + job["skipped"]
    fraction = done / total
    filled = int(width * fraction)
    rate = job.get("rate_per_s")
    eta = job.get("eta_s")
    rate_text = f"{rate:7,.0f} msg/s" if rate is not None else "      - msg/s"
    eta_text = f"ETA {eta:6.1f}s" if eta is not None else "ETA      -"
    return (
        f"[{'#' * filled}{'-' * (width - filled)}] {fraction:6.1%}  {done:,}/{total:,}  "
        f"sent {job['sent']:,}  failed {job['failed']:,}  {rate_text}  {eta_text}  {job['status']}"
    )


class Client:
    def __init__(self, url: str, token: str) -> None:
        self.http = httpx.Client(
            base_url=url.rstrip("/"), headers={"Authorization": f"Bearer {token}"}, timeout=60
        )

    def call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            server = self.http.base_url
            raise CliError(f"cannot reach the fanout server at {server} ({exc})", 3) from None
        try:
            data: dict[str, Any] = response.json()
        except ValueError:
            raise CliError(f"the server answered {response.status_code} without JSON", 4) from None
        if response.status_code >= 400:
            error = data.get("error", {})
            where = f" ({error['field']})" if error.get("field") else ""
            if response.status_code == 401:
                raise CliError("the server refused the token (check FANOUT_TOKEN or --token)", 4)
            raise CliError(f"{error.get('message', response.text)}{where}", 4)
        return data


def _client(args: argparse.Namespace) -> Client:
    url = args.url or os.environ.get("FANOUT_URL") or "http://127.0.0.1:8000"
    token = args.token or os.environ.get("FANOUT_TOKEN")
    if not token:
        raise CliError("no API token: set FANOUT_TOKEN or pass --token", 2)
    return Client(url, token)


def _print(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data) if args.json else text)


def watch(client: Client, job_id: str, as_json: bool) -> dict[str, Any]:
    """Poll the job until it ends, drawing a progress bar (or JSON lines)."""
    tty = sys.stderr.isatty() and not as_json
    last_print = 0.0
    while True:
        job = client.call("GET", f"/v1/jobs/{job_id}")
        if as_json:
            print(json.dumps(job), flush=True)
        elif tty:
            sys.stderr.write("\r" + progress_line(job))
            sys.stderr.flush()
        elif time.monotonic() - last_print >= 2 or job["status"] in ENDED:
            print(progress_line(job), file=sys.stderr)
            last_print = time.monotonic()
        if job["status"] in ENDED:
            if tty:
                sys.stderr.write("\n")
            return job
        time.sleep(0.5)


def cmd_send(args: argparse.Namespace) -> int:
    path = Path(args.file)
    if not path.is_file():
        raise CliError(f"file not found: {path}", 2)
    spec: dict[str, Any] = {
        "page_id": args.page,
        "message": {"text": args.text},
        "messaging_type": "MESSAGE_TAG" if args.tag else args.messaging_type,
    }
    for field in ("tag", "send_at", "callback_url"):
        if getattr(args, field):
            spec[field] = getattr(args, field)
    client = _client(args)
    headers = {"Idempotency-Key": args.idempotency_key} if args.idempotency_key else {}
    with path.open("rb") as f:
        files = {"spec": (None, json.dumps(spec)), "recipients": (path.name, f, "text/csv")}
        accepted = client.call("POST", "/v1/jobs", files=files, headers=headers)
    _print(
        args,
        accepted,
        f"job {accepted['job_id']} {accepted['status']}: {accepted['total']:,} recipients"
        + (
            f" ({accepted['duplicates_removed']:,} duplicates removed)"
            if accepted["duplicates_removed"]
            else ""
        ),
    )
    if args.watch:
        job = watch(client, accepted["job_id"], args.json)
        return 0 if job["status"] == "completed" else 1
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    client = _client(args)
    if args.watch:
        job = watch(client, args.job, args.json)
    else:
        job = client.call("GET", f"/v1/jobs/{args.job}")
    codes = ", ".join(f"{k}: {v}" for k, v in job["error_codes"].items()) or "none"
    _print(
        args,
        job,
        f"{progress_line(job)}\nerror codes: {codes}"
        + (f"\nreason: {job['reason']}" if job.get("reason") else ""),
    )
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    client = _client(args)
    params = {"limit": str(args.limit), **({"status": args.status} if args.status else {})}
    page = client.call("GET", "/v1/jobs", params=params)
    lines = [
        f"{j['job_id']}  {j['status']:<10} {j['sent'] + j['failed'] + j['skipped']:>9,}/"
        f"{j['total']:<9,} {j['created_at'] or ''}"
        for j in page["items"]
    ]
    _print(args, page, "\n".join(lines) if lines else "no jobs")
    return 0


def cmd_control(args: argparse.Namespace) -> int:
    job = _client(args).call("POST", f"/v1/jobs/{args.job}/{args.command}")
    _print(args, job, f"job {job['job_id']} {job['status']}")
    return 0


def add_commands(sub: Any) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url", help="the producer's URL (default FANOUT_URL or http://127.0.0.1:8000)"
    )
    common.add_argument("--token", help="API token (default FANOUT_TOKEN)")
    common.add_argument("--json", action="store_true", help="print the API's JSON, for scripts")

    s = sub.add_parser(
        "send",
        parents=[common],
        help="upload a CSV of recipients and send them a message",
        description="Upload a CSV (an `id` column with PSIDs; other columns fill {{placeholders}}) "
        "and send one message to everyone in it.",
    )
    s.add_argument("file", help="CSV file with a header and an id column")
    s.add_argument("--page", required=True, help="the Facebook page id to send from")
    s.add_argument("--text", required=True, help='message text, e.g. "Hi {{first_name|there}}"')
    s.add_argument(
        "--messaging-type", default="UPDATE", choices=["RESPONSE", "UPDATE", "MESSAGE_TAG"]
    )
    s.add_argument("--tag", help="message tag (implies MESSAGE_TAG), e.g. HUMAN_AGENT")
    s.add_argument("--send-at", help="ISO 8601 time with a zone to send at, e.g. 2026-12-01T09:00Z")
    s.add_argument("--callback-url", help="URL to receive the final job when it ends")
    s.add_argument("--idempotency-key", help="a retried send with the same key makes no second job")
    s.add_argument("--watch", action="store_true", help="show progress until the job ends")
    s.set_defaults(run=cmd_send)

    st = sub.add_parser("status", parents=[common], help="show a job (--watch: until it ends)")
    st.add_argument("job")
    st.add_argument("--watch", action="store_true", help="show progress until the job ends")
    st.set_defaults(run=cmd_status)

    j = sub.add_parser("jobs", parents=[common], help="list your jobs, newest first")
    j.add_argument("--status", help="only jobs in this status")
    j.add_argument("--limit", type=int, default=20)
    j.set_defaults(run=cmd_jobs)

    for name, what in (("pause", "pause"), ("resume", "resume"), ("cancel", "cancel")):
        c = sub.add_parser(name, parents=[common], help=f"{what} a job across the whole fleet")
        c.add_argument("job")
        c.set_defaults(run=cmd_control)
