"""The ``fanout`` command as a user runs it: against a real producer, with one-line errors and
exit codes a script can rely on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import API_TOKENS, PAGE, PAGE_TOKEN, ROOT, Stack, free_port

from services import client


def fanout(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FANOUT_")}
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        env={**clean, **(env or {})},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=90,
    )


def test_send_watch_status_jobs_and_controls(stack: Stack, tmp_path: Path) -> None:
    stack.start_fakegraph()
    api = stack.start_producer()
    stack.start_consumer("c1")
    env = {"FANOUT_URL": str(api.base_url), "FANOUT_TOKEN": API_TOKENS["acme"]}
    contacts = tmp_path / "contacts.csv"
    contacts.write_text("id,first_name\n" + "".join(f"{10**9 + i},P{i}\n" for i in range(300)))
    sent = fanout(
        "send",
        str(contacts),
        "--page",
        PAGE,
        "--text",
        "Hi {{first_name}}",
        "--watch",
        "--json",
        env=env,
    )
    assert sent.returncode == 0, sent.stderr
    lines = [json.loads(line) for line in sent.stdout.splitlines()]
    assert lines[0]["total"] == 300
    assert lines[-1]["status"] == "completed" and lines[-1]["sent"] == 300
    job_id = lines[0]["job_id"]

    status = fanout("status", job_id, env=env)
    assert status.returncode == 0 and "completed" in status.stdout and "300/300" in status.stdout
    listed = fanout("jobs", "--json", env=env)
    assert [j["job_id"] for j in json.loads(listed.stdout)["items"]] == [job_id]
    stack.consumers[0].stop()
    other = fanout("send", str(contacts), "--page", PAGE, "--text", "Hi", env=env)
    assert other.returncode == 0 and "pending" in other.stdout
    second = other.stdout.split()[1]
    assert fanout("pause", second, env=env).stdout.strip() == f"job {second} paused"
    assert fanout("cancel", second, env=env).stdout.strip() == f"job {second} cancelled"


def test_errors_are_one_line_with_exit_codes(stack: Stack, tmp_path: Path) -> None:
    api = stack.start_producer()
    good = {"FANOUT_URL": str(api.base_url), "FANOUT_TOKEN": API_TOKENS["acme"]}
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("name\nAnn\n")
    cases = [
        (
            ["send", str(tmp_path / "missing.csv"), "--page", PAGE, "--text", "x"],
            good,
            2,
            "file not found",
        ),
        (["send", str(bad_csv), "--page", PAGE, "--text", "x"], good, 4, "no `id` column"),
        (
            ["status", "0-000000000000000000000000"],
            {**good, "FANOUT_TOKEN": "wrong"},
            4,
            "refused the token",
        ),
        (["status", "0-000000000000000000000000"], good, 4, "no such job"),
        (["jobs"], {**good, "FANOUT_URL": f"http://127.0.0.1:{free_port()}"}, 3, "cannot reach"),
        (["jobs"], {"FANOUT_URL": str(api.base_url)}, 2, "no API token"),
    ]
    for args, env, code, text in cases:
        result = fanout(*args, env=env)
        assert result.returncode == code, (args, result.stderr)
        assert text in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "Traceback" not in result.stderr


def test_fakegraph_takes_its_own_options() -> None:
    """`fanout fakegraph --port ...` as the k8s dev overlay and the README run it."""
    result = fanout("fakegraph", "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: fanout fakegraph") and "--tokens" in result.stdout


def test_name_metadata_and_global_options_before_the_command(stack: Stack, tmp_path: Path) -> None:
    stack.start_fakegraph()
    api = stack.start_producer()
    contacts = tmp_path / "contacts.csv"
    contacts.write_text("id\n" + "".join(f"{10**9 + i}\n" for i in range(20)))
    token = API_TOKENS["acme"]
    sent = fanout(
        *("--json", "--url", str(api.base_url), "--token", token),
        *("send", str(contacts), "--page", PAGE, "--text", "Hi", "--name", "Spring sale"),
        *("--metadata", "campaign=spring", "--metadata", "segment=a=b"),
    )
    assert sent.returncode == 0, sent.stderr
    job_id = json.loads(sent.stdout)["job_id"]
    job = api.get(f"/v1/jobs/{job_id}").json()
    assert job["metadata"] == {"campaign": "spring", "segment": "a=b", "name": "Spring sale"}
    listed = fanout("jobs", "--url", str(api.base_url), "--token", token)
    assert "Spring sale" in listed.stdout and f"page {PAGE}" in listed.stdout, listed.stdout
    bad = fanout("--url", str(api.base_url), "--token", token, "send", str(contacts), "--page",
                 PAGE, "--text", "x", "--metadata", "novalue")  # fmt: skip
    assert bad.returncode == 2 and "key=value" in bad.stderr


def test_help_shows_choices_examples_and_exit_codes() -> None:
    for command in ("send", "status", "jobs", "pause", "demo", "producer", "consumer"):
        shown = fanout(command, "--help")
        assert shown.returncode == 0 and "example" in shown.stdout, command
    send = fanout("send", "--help").stdout
    assert "{RESPONSE,UPDATE,MESSAGE_TAG}" in send and "130" in send and "--metadata" in send
    assert "--number PHONE_NUMBER_ID" in send and "fanout send people.csv --number" in send


WA_NUMBER = "106540352242922"  # a phone_number_id, as Meta's examples spell them
WA_TOKEN = "EAAwhatsappnumbertoken0123456789"


def test_send_on_whatsapp_by_changing_one_option(stack: Stack, tmp_path: Path) -> None:
    """The same CSV and command line on WhatsApp: --number instead of --page. A template with
    a personalised body parameter reaches every person as Meta's send body (E.164 digits, the
    leading + dropped); a text is a WhatsApp text; Messenger-only options are refused with the
    server's message naming the field, and WhatsApp-only ones beside --page by the command."""
    stack.env["FANOUT_WA_NUMBERS"] = f"{WA_NUMBER}={WA_TOKEN}"
    stack.env["FANOUT_TENANT_PAGES"] = f"acme={PAGE}|{WA_NUMBER}"
    stack.env["FANOUT_WA_TIERS"] = f"{WA_NUMBER}=unlimited"
    fake = stack.start_fakegraph("--tokens", f"{PAGE}={PAGE_TOKEN},{WA_NUMBER}={WA_TOKEN}")
    fake.configure(wa_numbers=[WA_NUMBER])
    api = stack.start_producer()
    stack.start_consumer("c1")
    env = {"FANOUT_URL": str(api.base_url), "FANOUT_TOKEN": API_TOKENS["acme"]}
    people = [str(447700900100 + i) for i in range(30)]
    contacts = tmp_path / "contacts.csv"
    contacts.write_text("id,first_name\n" + "".join(f"+{p},Ann{i}\n" for i, p in enumerate(people)))
    sent = fanout(
        *("send", str(contacts), "--number", WA_NUMBER, "--template", "order_shipped"),
        *("--language", "en_GB", "--param", "{{first_name}}", "--param", "today"),
        *("--tier", "spread", "--watch", "--json"),
        env=env,
    )
    assert sent.returncode == 0, sent.stderr
    lines = [json.loads(line) for line in sent.stdout.splitlines()]
    job_id = lines[0]["job_id"]
    final = lines[-1]
    assert (final["status"], final["sent"], final["failed"]) == ("completed", 30, 0), final
    assert (final["channel"], final["phone_number_id"], final["tier"]) == (
        "whatsapp",
        WA_NUMBER,
        "spread",
    )
    bodies = fake.http.get("/_fake/bodies").json()
    for i, person in enumerate(people):
        assert bodies[person]["to"] == person
        assert bodies[person]["type"] == "template"
        assert bodies[person]["template"] == {
            "name": "order_shipped",
            "language": {"code": "en_GB"},
            "components": [
                {
                    "type": "body",
                    "parameters": [
                        {"type": "text", "text": f"Ann{i}"},
                        {"type": "text", "text": "today"},
                    ],
                }
            ],
        }, person
    status = fanout("status", job_id, env=env)
    assert status.returncode == 0, status.stderr
    assert f"WhatsApp {WA_NUMBER}" in status.stdout and "delivered 0, read 0" in status.stdout

    stack.consumers[0].stop()
    text = fanout("send", str(contacts), "--number", WA_NUMBER, "--text", "Hi {{first_name}}",
                  "--json", env=env)  # fmt: skip
    assert text.returncode == 0, text.stderr
    text_job = api.get(f"/v1/jobs/{json.loads(text.stdout)['job_id']}").json()
    assert (text_job["channel"], text_job["message_kind"]) == ("whatsapp", "whatsapp_text")
    listed = fanout("jobs", env=env)
    assert listed.stdout.count(f"WhatsApp {WA_NUMBER}") == 2, listed.stdout

    refused = fanout("send", str(contacts), "--number", WA_NUMBER, "--text", "Hi",
                     "--messaging-type", "RESPONSE", env=env)  # fmt: skip
    assert refused.returncode == 4 and "messaging_type)" in refused.stderr, refused.stderr
    for extra in (["--template", "x"], ["--text", "x", "--tier", "spread"]):
        wrong = fanout("send", str(contacts), "--page", PAGE, *extra, env=env)
        assert wrong.returncode == 2 and "--number" in wrong.stderr, wrong.stderr
        assert len(wrong.stderr.strip().splitlines()) == 1
    both = fanout("send", str(contacts), "--page", PAGE, "--number", WA_NUMBER, "--text", "x")
    assert both.returncode == 2 and "not allowed with" in both.stderr


def test_status_says_why_a_job_waits() -> None:
    """A spread WhatsApp job waiting for its tier (or a held page) says so and until when."""
    job = {
        "error_codes": {},
        "channel": "whatsapp",
        "phone_number_id": WA_NUMBER,
        "delivered": 240,
        "read": 100,
        "undelivered": 3,
        "page_hold": "tier_reached",
        "hold_until": "2026-12-03T09:00:00.000Z",
    }
    assert client._details(job).splitlines() == [
        f"WhatsApp {WA_NUMBER}",
        "receipts: delivered 240, read 100, undelivered 3",
        "error codes: none",
        "waiting: tier_reached until 2026-12-03T09:00:00.000Z",
    ]
    messenger = {"error_codes": {"551": 2}, "page_id": PAGE, "delivered": 0, "read": 0}
    assert client._details(messenger) == "error codes: 551: 2"  # as before channels
