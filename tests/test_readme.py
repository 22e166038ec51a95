"""The README's commands cannot drift: every `fanout ...` line in its shell blocks parses with
the real argument parsers, and every JSON body it posts to /v1/jobs decodes into the Struct the
API uses (its send_at still in the future)."""

from __future__ import annotations

import re
import shlex
from typing import Any

import msgspec
import pytest
from conftest import ROOT

from services.cli import build_parser
from services.fakegraph.server import _argument_parser as fakegraph_parser
from services.producer import intake
from shared.models import (
    JobRequest,
    SendTestRequest,
    UploadSpec,
    WhatsAppJobRequest,
    WhatsAppUploadSpec,
)

README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```sh\n(.*?)```", README, re.DOTALL)


def fanout_lines() -> list[str]:
    lines: list[str] = []
    for block in BLOCKS:
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            line = line.split(" #", 1)[0].strip().rstrip("&").strip()
            if line.startswith(("fanout ", ".venv/bin/fanout ")):
                lines.append(line.removeprefix(".venv/bin/"))
    return lines


def expand(line: str) -> list[list[str]]:
    """`fanout pause|resume|cancel ID` is three commands."""
    words = shlex.split(line)[1:]
    if "|" in words[0]:
        return [[choice, *words[1:]] for choice in words[0].split("|")]
    return [words]


def test_every_fanout_command_in_the_readme_parses() -> None:
    lines = fanout_lines()
    assert len(lines) >= 6, lines
    for line in lines:
        for words in expand(line):
            if words[0] == "fakegraph":
                fakegraph_parser().parse_args(words[1:])
            else:
                build_parser().parse_args(words)


def bodies() -> list[tuple[str, dict[str, Any]]]:
    found: list[tuple[str, dict[str, Any]]] = []
    for block in BLOCKS:
        for curl in re.split(r"\n(?=curl )", block):
            if "/v1/jobs " not in curl or "-X POST" not in curl:
                continue
            for kind, raw in re.findall(r"(-d|-F) '(?:spec=)?(\{.*?\})'", curl, re.DOTALL):
                found.append((kind, msgspec.json.decode(raw)))
    return found


def test_every_job_body_in_the_readme_is_accepted() -> None:
    found = bodies()
    assert len(found) >= 4, found
    for kind, body in found:
        if body.get("channel") == "whatsapp":
            job = WhatsAppJobRequest if kind == "-d" else WhatsAppUploadSpec
            intake.send_at_ms(msgspec.convert(body, job))
            continue
        if "test_recipients" in body:
            spec: UploadSpec = msgspec.convert(body, SendTestRequest)
        elif kind == "-d":
            spec = msgspec.convert(body, JobRequest)
        else:
            spec = msgspec.convert(body, UploadSpec)
        if spec.send_at is not None:  # refused with 422 once it is in the past
            intake.send_at_ms(spec)


@pytest.mark.parametrize("command", ["./scripts/demo", "./scripts/test"])
def test_the_two_commands_exist(command: str) -> None:
    assert command in README
    assert (ROOT / command).stat().st_mode & 0o111
