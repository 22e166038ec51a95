"""``fanout send|status|jobs|pause|resume|cancel``: the API from a terminal.

Server and token come from ``--url``/``--token`` or FANOUT_URL/FANOUT_TOKEN (before or after
the subcommand). Every failure is one line on stderr and a non-zero exit: 2 for bad usage or
input, 3 when the server cannot be reached, 4 when it refuses (bad token, unknown job, bad
CSV: its message is shown as is). A watch (``send --watch``, ``status --watch``) exits 0 when
the job completed, 1 when it ended otherwise (failed, cancelled), 130 on Ctrl-C (the job goes
on). ``--json`` prints the API's JSON instead of text, for scripts.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import time
from pathlib import Path
from typing import Any

import httpx

from services import progress

ENDED = ("completed", "failed", "cancelled")


class CliError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


EXIT_CODES = """\
exit codes:
  0    done (a watch: the job completed)
  1    a watched job ended otherwise (failed, cancelled), or a --test send failed for someone
  2    bad usage or input (e.g. file not found)
  3    the server cannot be reached
  4    the server refused (bad token, unknown job, bad CSV: its message is shown)
  130  Ctrl-C during a watch: the job goes on (fanout status ID --watch)
"""


class Interrupted(Exception):
    """Ctrl-C during a watch: the display has ended its line; main prints the hint, exits 130."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"the job goes on: fanout status {job_id} --watch")


def progress_line(job: dict[str, Any], width: int = 100) -> str:
    """One plain line: a bar, the share done, counts, rate, ETA (only while running), status."""
    return progress.plain(job, width)


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
    """Poll the job until it ends, drawing its progress (or printing JSON lines); one final
    line at the end. Ctrl-C ends the display and raises Interrupted (the job goes on)."""
    try:
        if as_json:
            while True:
                job = client.call("GET", f"/v1/jobs/{job_id}")
                print(json.dumps(job), flush=True)
                if job["status"] in ENDED:
                    return job
                time.sleep(0.5)
        with progress.Display() as display:
            try:
                while True:
                    job = client.call("GET", f"/v1/jobs/{job_id}")
                    if job["status"] in ENDED:
                        display.final(job)
                        return job
                    display.update(job)
                    time.sleep(0.5)
            except KeyboardInterrupt:
                display.interrupted()
                raise
    except KeyboardInterrupt:
        raise Interrupted(job_id) from None


def _metadata(args: argparse.Namespace) -> dict[str, str]:
    metadata: dict[str, str] = {}
    for item in args.metadata or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CliError(f"--metadata takes key=value, not {item!r}", 2)
        metadata[key] = value
    if args.name:
        metadata["name"] = args.name
    return metadata


def _first_row(path: Path) -> dict[str, str]:
    """The CSV's first recipient's variables (every column but id), for a test send."""
    with path.open(newline="", encoding="utf-8-sig") as f:
        row = next(csv.DictReader(f), None)
    return {k: v for k, v in (row or {}).items() if k and k != "id" and v is not None}


def _test_send(client: Client, args: argparse.Namespace, spec: dict[str, Any]) -> int:
    path = Path(args.file)
    body = {**spec, "test_recipients": args.test, "test_variables": _first_row(path)}
    answer = client.call("POST", "/v1/jobs", json=body)
    lines = []
    for r in answer["results"]:
        if r["outcome"] == "sent":
            lines.append(f"{r['recipient']}: sent ({r['message'] or 'no message id'})")
        else:
            code = "/".join(c for c in (r["code"], r["subcode"]) if c)
            lines.append(f"{r['recipient']}: failed {code}: {r['message']}")
    _print(args, answer, "\n".join(lines))
    return 0 if all(r["outcome"] == "sent" for r in answer["results"]) else 1


def _whatsapp_message(args: argparse.Namespace) -> dict[str, Any]:
    """WhatsApp's own message: a text, or an approved template whose body parameters are the
    --param values in order ({{1}}, {{2}}, ... in the template as Meta approved it)."""
    if args.text is not None:
        return {"text": {"body": args.text}}
    language = {"code": args.language or "en_US"}
    template: dict[str, Any] = {"name": args.template, "language": language}
    if args.param:
        parameters = [{"type": "text", "text": value} for value in args.param]
        template["components"] = [{"type": "body", "parameters": parameters}]
    return {"template": template}


def _spec(args: argparse.Namespace) -> dict[str, Any]:
    """The job without its recipients: --page makes a Messenger job, --number a WhatsApp one,
    the rest of the command line the same. A Messenger-only option given on WhatsApp goes to the
    server, whose refusal names the field; WhatsApp-only options beside --page are refused here."""
    if args.number is not None:
        spec: dict[str, Any] = {
            "channel": "whatsapp",
            "phone_number_id": args.number,
            "message": _whatsapp_message(args),
        }
        if args.messaging_type:
            spec["messaging_type"] = args.messaging_type
        if args.tier:
            spec["tier"] = args.tier
        return spec
    whatsapp_only = [
        option
        for option, given in (
            ("--template", args.template),
            ("--param", args.param),
            ("--tier", args.tier),
            ("--language", args.language),
        )
        if given
    ]
    if whatsapp_only:
        raise CliError(f"{whatsapp_only[0]} is for a WhatsApp job (--number), not --page", 2)
    return {
        "page_id": args.page,
        "message": {"text": args.text},
        "messaging_type": "MESSAGE_TAG" if args.tag else args.messaging_type or "UPDATE",
    }


def cmd_send(args: argparse.Namespace) -> int:
    path = Path(args.file)
    if not path.is_file():
        raise CliError(f"file not found: {path}", 2)
    if args.param and args.template is None:
        raise CliError("--param fills a template's body: give --template NAME", 2)
    spec = _spec(args)
    for field in ("tag", "send_at", "callback_url"):
        if getattr(args, field):
            spec[field] = getattr(args, field)
    metadata = _metadata(args)
    if metadata:
        spec["metadata"] = metadata
    client = _client(args)
    if args.test:
        return _test_send(client, args, spec)
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
        # The watch printed the final line (or the JSON lines): only what it does not show.
        job = watch(client, args.job, args.json)
        if not args.json:
            print(_details(job))
        return 0 if job["status"] == "completed" else 1
    job = client.call("GET", f"/v1/jobs/{args.job}")
    _print(args, job, f"{progress_line(job)}\n{_details(job)}")
    return 0


def _sender(job: dict[str, Any]) -> str:
    """'page <id>' or 'WhatsApp <phone_number_id>', as the job page names the sender."""
    if job.get("channel") == "whatsapp":
        return f"WhatsApp {job['phone_number_id']}"
    return f"page {job['page_id']}"


def _details(job: dict[str, Any]) -> str:
    codes = ", ".join(f"{k}: {v}" for k, v in job["error_codes"].items()) or "none"
    name = (job.get("metadata") or {}).get("name")
    # Receipts: always for WhatsApp (its statuses are the only word on delivery), for Messenger
    # once webhooks reported some (a deployment without them would show a misleading 0).
    receipts = job.get("channel") == "whatsapp" or job.get("delivered") or job.get("read")
    return (
        (f"name: {name}\n" if name else "")
        + (f"{_sender(job)}\n" if job.get("channel") == "whatsapp" else "")
        + (
            f"receipts: delivered {job['delivered']:,}, read {job['read']:,}"
            + (f", undelivered {job['undelivered']:,}" if job.get("undelivered") else "")
            + "\n"
            if receipts
            else ""
        )
        + f"error codes: {codes}"
        + (f"\nreason: {job['reason']}" if job.get("reason") else "")
        + _hold(job)
    )


def _hold(job: dict[str, Any]) -> str:
    """Why a running job sends nothing for now, and until when: its sender is held (a
    provider outage, a restriction) or, on WhatsApp, the portfolio's messaging tier is used up
    and the job waits for the oldest reach to turn 24 h old."""
    if not job.get("page_hold"):
        return ""
    until = f" until {job['hold_until']}" if job.get("hold_until") else ""
    return f"\nwaiting: {job['page_hold']}{until}"


def cmd_jobs(args: argparse.Namespace) -> int:
    client = _client(args)
    params = {"limit": str(args.limit), **({"status": args.status} if args.status else {})}
    page = client.call("GET", "/v1/jobs", params=params)
    lines = [
        f"{j['job_id']}  {j['status']:<10} {_sender(j):<17} "
        f"{j['sent'] + j['failed'] + j['skipped']:>9,}/{j['total']:<9,} "
        f"sent {j['sent']:>9,} failed {j['failed']:>7,}  "
        f"{(j.get('metadata') or {}).get('name') or ''}"
        for j in page["items"]
    ]
    _print(args, page, "\n".join(line.rstrip() for line in lines) if lines else "no jobs")
    return 0


def cmd_control(args: argparse.Namespace) -> int:
    job = _client(args).call("POST", f"/v1/jobs/{args.job}/{args.command}")
    _print(args, job, f"job {job['job_id']} {job['status']}")
    return 0


def global_options(parser: argparse.ArgumentParser, *, under_command: bool) -> None:
    """--url, --token, --json: on the top-level parser and on every client subcommand, so they
    work before or after it (the subcommand's copies default to 'not given', leaving a value
    given before the subcommand in place)."""
    default: Any = argparse.SUPPRESS if under_command else None
    parser.add_argument(
        "--url",
        default=default,
        help="the producer's URL (default: FANOUT_URL, else http://127.0.0.1:8000)",
    )
    parser.add_argument("--token", default=default, help="API token (default: FANOUT_TOKEN)")
    parser.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS if under_command else False,
        help="print the API's JSON instead of text (a watch: one JSON line per poll)",
    )


_SEND_EXAMPLES = """\
examples:
  fanout send contacts.csv --page 1234567890 --text "Hi {{first_name|there}}" --watch
  fanout send vip.csv --page 1234567890 --text "Sale starts now" --name "Black Friday" \\
      --metadata campaign=bf26 --metadata segment=vip --send-at 2027-03-01T09:00:00+01:00
  fanout send agents.csv --page 1234567890 --tag HUMAN_AGENT --text "An agent replied"
  fanout send contacts.csv --page 1234567890 --text "Hi {{first_name}}" --test 2401234567
  fanout send people.csv --number 106540352242922 --template order_shipped --language en_US \\
      --param "{{first_name|there}}" --tier spread --watch

"""


def add_commands(sub: Any) -> None:
    common = argparse.ArgumentParser(add_help=False)
    global_options(common, under_command=True)
    raw = argparse.RawDescriptionHelpFormatter

    s = sub.add_parser(
        "send",
        parents=[common],
        formatter_class=raw,
        help="upload a CSV of recipients and send them a message",
        description="Upload a CSV (an `id` column with PSIDs, or E.164 numbers with --number;\n"
        "other columns fill {{placeholders}}) and send one message to everyone in it,\n"
        "on Messenger from --page or on WhatsApp from --number.",
        epilog=_SEND_EXAMPLES + EXIT_CODES,
    )
    s.add_argument("file", help="CSV file with a header and an id column")
    sender = s.add_mutually_exclusive_group(required=True)
    sender.add_argument("--page", help="the Facebook page id to send from (Messenger)")
    sender.add_argument(
        "--number",
        metavar="PHONE_NUMBER_ID",
        help="the WhatsApp number to send from, by its phone_number_id: a WhatsApp job, the "
        "CSV's ids E.164 phone numbers (a leading + is dropped)",
    )
    what = s.add_mutually_exclusive_group(required=True)
    what.add_argument("--text", help='message text, e.g. "Hi {{first_name|there}}"')
    what.add_argument(
        "--template",
        metavar="NAME",
        help="WhatsApp: an approved message template, by name (reaches people outside their "
        "24 h service window; a --text reaches only those inside it)",
    )
    s.add_argument(
        "--language",
        metavar="CODE",
        help="WhatsApp: the template's language code, as approved (default: en_US)",
    )
    s.add_argument(
        "--param",
        action="append",
        metavar="TEXT",
        help="WhatsApp: the template body's next parameter ({{1}}, {{2}}, ... in order), e.g. "
        '"{{first_name}}" (repeatable)',
    )
    s.add_argument(
        "--tier",
        choices=["refuse", "spread"],
        help="WhatsApp: when the template would reach more new people than the messaging "
        "tier has left, refuse the job (the server's default: 422 with how many can be sent "
        "now) or spread it, sending as room returns",
    )
    s.add_argument(
        "--messaging-type",
        choices=["RESPONSE", "UPDATE", "MESSAGE_TAG"],
        help="Meta's lane: RESPONSE or UPDATE inside the person's 24 h window (default: "
        "UPDATE); MESSAGE_TAG with --tag. Messenger only: WhatsApp has no lanes",
    )
    s.add_argument(
        "--tag",
        choices=["HUMAN_AGENT"],
        help="message tag (implies MESSAGE_TAG): the one a text may carry (CUSTOMER_FEEDBACK "
        "needs its template; Meta retired the others)",
    )
    s.add_argument(
        "--send-at",
        metavar="TIME",
        help="ISO 8601 time with a zone, at most a year ahead, e.g. 2027-03-01T09:00:00Z "
        "(default: now; a time in the past is refused)",
    )
    s.add_argument("--name", help="a name for the job, shown in lists (stored as metadata.name)")
    s.add_argument(
        "--metadata",
        action="append",
        metavar="KEY=VALUE",
        help="a metadata entry kept with the job and shown by status (repeatable)",
    )
    s.add_argument(
        "--callback-url", metavar="URL", help="URL to receive the final job when it ends"
    )
    s.add_argument(
        "--idempotency-key",
        metavar="KEY",
        help="a retried send with the same key makes no second job",
    )
    s.add_argument(
        "--test",
        action="append",
        metavar="PSID",
        help="a test send instead of the job: the message, filled with the CSV's first row, to "
        "this person only (repeatable, up to 10); no job is made; exit 0 if every one was sent",
    )
    s.add_argument(
        "--watch",
        action="store_true",
        help="show progress until the job ends; exit 0 if it completed, 1 otherwise",
    )
    s.set_defaults(run=cmd_send)

    st = sub.add_parser(
        "status",
        parents=[common],
        formatter_class=raw,
        help="show a job (--watch: until it ends)",
        description="Show a job's counters, error codes and reason.",
        epilog="examples:\n  fanout status 2-9f3c... --watch\n  fanout --json status 2-9f3c...\n\n"
        + EXIT_CODES,
    )
    st.add_argument("job", help="the job id, as send printed it")
    st.add_argument(
        "--watch",
        action="store_true",
        help="show progress until the job ends; exit 0 if it completed, 1 otherwise",
    )
    st.set_defaults(run=cmd_status)

    j = sub.add_parser(
        "jobs",
        parents=[common],
        formatter_class=raw,
        help="list your jobs, newest first",
        description="List the tenant's jobs, newest first: id, status, page, progress, "
        "sent, failed, name.",
        epilog="examples:\n  fanout jobs --status running\n  fanout jobs --limit 100 --json\n\n"
        + EXIT_CODES,
    )
    j.add_argument(
        "--status",
        choices=["scheduled", "pending", "running", "paused", "completed", "failed", "cancelled"],
        help="only jobs in this status",
    )
    j.add_argument("--limit", type=int, default=20, help="how many (default: %(default)s)")
    j.set_defaults(run=cmd_jobs)

    for name, what in (
        ("pause", "pause (stop releasing; sends in flight finish)"),
        ("resume", "resume (release again where it stopped)"),
        ("cancel", "cancel (the rest is skipped)"),
    ):
        c = sub.add_parser(
            name,
            parents=[common],
            formatter_class=raw,
            help=f"{name} a job across the whole fleet",
            description=f"{what.capitalize()} a job across the whole fleet.",
            epilog=f"example:\n  fanout {name} 2-9f3c...\n\n" + EXIT_CODES,
        )
        c.add_argument("job", help="the job id")
        c.set_defaults(run=cmd_control)
