"""The terminal client as a person sees it: run under a pseudo-terminal of 80 columns
(pexpect), its output fed to a VT100 emulator (pyte), and the screen read back. One progress
line while a job is watched, one final line after; Ctrl-C leaves a hint and exits 130."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pexpect
import pyte
import pytest
from conftest import API_TOKENS, ROOT, Stack, free_port, psids, wait_for

from services import progress
from shared import jobview

COLUMNS, ROWS = 80, 24


class Terminal:
    """A command on a pseudo-terminal and the screen a terminal would show for it."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.screen = pyte.Screen(COLUMNS, ROWS)
        self.stream = pyte.ByteStream(self.screen)
        self.raw = b""
        self.eof = False
        self.child = pexpect.spawn(
            sys.executable,
            ["-m", "services.cli", *args],
            env={**env, "TERM": "xterm-256color", "COLUMNS": str(COLUMNS)},
            cwd=str(ROOT),
            dimensions=(ROWS, COLUMNS),
        )

    def pump(self) -> bool:
        """Feed what the command wrote so far to the screen; True once it closed the pty."""
        if self.eof:
            return True
        try:
            while True:
                data = self.child.read_nonblocking(65536, timeout=0.05)
                self.raw += data
                self.stream.feed(data)
        except pexpect.TIMEOUT:
            return False
        except pexpect.EOF:
            self.eof = True
            return True

    def lines(self) -> list[str]:
        self.pump()
        return [line.rstrip() for line in self.screen.display if line.strip()]

    def wait_screen(self, text: str, timeout: float = 30) -> list[str]:
        def shown() -> list[str] | None:
            lines = self.lines()
            return lines if any(text in line for line in lines) else None

        return wait_for(shown, timeout, f"{text!r} on the screen")

    def wait_exit(self, timeout: float = 60) -> int:
        wait_for(self.pump, timeout, "the command to exit")
        self.child.close()
        return int(self.child.exitstatus if self.child.exitstatus is not None else -1)


@pytest.fixture
def terminals() -> Iterator[list[Terminal]]:
    opened: list[Terminal] = []
    yield opened
    for term in opened:
        if term.child.isalive():
            term.child.terminate(force=True)


def client_env(stack: Stack) -> dict[str, str]:
    assert stack.api is not None
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FANOUT_")}
    return {**clean, "FANOUT_URL": str(stack.api.base_url), "FANOUT_TOKEN": API_TOKENS["acme"]}


def progress_lines(lines: list[str], job_total: int) -> list[str]:
    return [line for line in lines if f"/{job_total:,}" in line]


def test_one_progress_line_while_watching_and_one_final_line(
    stack: Stack, terminals: list[Terminal]
) -> None:
    stack.start_fakegraph("--latency-ms", "20")
    stack.start_producer()
    job_id = stack.submit(psids(600))  # pending: no consumer yet
    term = Terminal(["status", job_id, "--watch"], client_env(stack))
    terminals.append(term)
    lines = term.wait_screen("pending")
    assert len(lines) == 1 and len(lines[0]) <= COLUMNS, lines
    # redrawn in place: several redraws later, still one line
    wait_for(lambda: term.lines() and term.raw.count(b"pending") >= 3, 15, "redraws")
    assert len(term.lines()) == 1, term.lines()

    stack.start_consumer("c1", FANOUT_CONCURRENCY="4")
    lines = term.wait_screen("running")
    assert len(progress_lines(lines, 600)) == 1 and len(lines) == 1, lines
    assert term.wait_exit() == 0
    lines = term.lines()
    assert len(progress_lines(lines, 600)) == 1, lines
    (final,) = progress_lines(lines, 600)
    assert "completed" in final and "600/600" in final and len(final) <= COLUMNS
    assert lines == [final, "error codes: none"], lines


def test_ctrl_c_leaves_a_hint_and_exits_130(stack: Stack, terminals: list[Terminal]) -> None:
    stack.start_fakegraph()
    api = stack.start_producer()
    job_id = stack.submit(psids(50))
    # --url before the subcommand, and it wins over FANOUT_URL
    env = {**client_env(stack), "FANOUT_URL": f"http://127.0.0.1:{free_port()}"}
    term = Terminal(["--url", str(api.base_url), "status", job_id, "--watch"], env)
    terminals.append(term)
    term.wait_screen("pending")
    term.child.sendintr()
    assert term.wait_exit() == 130
    lines = term.lines()
    hint = f"the job goes on: fanout status {job_id} --watch"
    assert lines[-1] == hint, lines
    assert len(progress_lines(lines, 50)) == 1, lines
    assert stack.job(job_id)["status"] == "pending"  # the job goes on


def test_a_cancelled_job_shows_skipped_and_exits_1(stack: Stack, terminals: list[Terminal]) -> None:
    stack.start_fakegraph()
    api = stack.start_producer()
    job_id = stack.submit(psids(200))
    assert api.post(f"/v1/jobs/{job_id}/cancel").json()["status"] == "cancelled"
    stack.start_consumer("c1")  # settles the chunks that were out as skipped
    stack.wait_done(job_id)
    term = Terminal(["status", job_id, "--watch"], client_env(stack))
    terminals.append(term)
    assert term.wait_exit() == 1
    (final,) = progress_lines(term.lines(), 200)
    assert "cancelled" in final and "skipped 200" in final and "100.0%" in final
    # the bar is drawn in the skipped colour, not the sent one
    assert b"\x1b[33m" in term.raw or b";33m" in term.raw, term.raw[-400:]


def test_fakegraph_serves_on_the_port_given() -> None:
    port = free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FANOUT_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "fakegraph", "--port", str(port)]
        + ["--latency-ms", "5"],
        cwd=ROOT,
        env=clean,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}/_fake/stats"

        def up() -> bool:
            try:
                return httpx.get(url, timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(up, 15, f"fakegraph on port {port}")
    finally:
        proc.terminate()
        assert proc.wait(15) == 0


def _hash(**fields: Any) -> dict[str, bytes]:
    base = {
        "status": "running",
        "page_id": "1001",
        "total": 1000,
        "sent": 400,
        "failed": 0,
        "skipped": 0,
        "indoubt": 0,
        "messaging_type": "UPDATE",
        "tag": "",
        "started_at": 1_000_000,
    }
    base.update(fields)
    return {k: str(v).encode() for k, v in base.items()}


def test_rate_counts_active_time_and_a_paused_job_has_no_eta() -> None:
    # 400 sent over 10 s of which 6 s paused (4 s before, still paused): 100/s, no ETA
    paused = jobview.view("0-x", _hash(status="paused", paused_at=1_004_000), 1_010_000)
    assert paused.rate_per_s == 100.0 and paused.eta_s is None
    # resumed after a 6 s pause (paused_ms): 4 s active of 10, 600 more to go at 100/s
    running = jobview.view("0-x", _hash(paused_ms=6_000), 1_010_000)
    assert running.rate_per_s == 100.0 and running.eta_s == 6.0
    # cancelled while paused: the rate over its active time still
    cancelled = jobview.view(
        "0-x",
        _hash(status="cancelled", paused_at=1_004_000, finished_at=1_010_000, skipped=600),
        1_020_000,
    )
    assert cancelled.rate_per_s == 100.0


def test_the_line_fits_and_shows_skipped() -> None:
    job = {"total": 10_000, "sent": 3_000, "failed": 25, "skipped": 6_975, "status": "cancelled"}
    for width in (40, 60, 80, 120):
        text = progress.line({**job, "rate_per_s": 1234.5, "eta_s": None}, width)
        assert text.cell_len <= width, (width, text.plain)
        assert text.plain.endswith("cancelled")
    assert "skipped 6,975" in progress.plain(job, 100)
    paused = {**job, "skipped": 0, "status": "paused", "rate_per_s": 80.0, "eta_s": 12.0}
    assert "ETA" not in progress.plain(paused, 200)
