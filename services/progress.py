"""A job's progress in a terminal, drawn with ``rich``: one line that fits the terminal's
width, redrawn in place while the job runs, and one final line when it ends or the watch is
interrupted.

The bar shows sent (green), failed (red) and skipped (yellow) recipients side by side, so a
cancelled job's bar shows what it never reached. On a terminal the line is a ``rich.live.Live``
display, redrawn in place and left as the final line when it stops; elsewhere (a pipe, a CI log) a
plain line every few seconds and the final one.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any

from rich.console import Console, ConsoleOptions, RenderResult
from rich.live import Live
from rich.text import Text

ENDED = ("completed", "failed", "cancelled")
_BAR_MIN = 10
_BAR_MAX = 40
_PLAIN_EVERY_S = 2.0
_SPARE = 3


def _parts(job: Mapping[str, Any]) -> list[str]:
    """The words after the bar, most important first; the least important go first when the
    terminal is narrow."""
    total = int(job["total"])
    done = int(job["sent"]) + int(job["failed"]) + int(job["skipped"])
    share = done / total if total else 1.0
    parts = [f"{share:6.1%}", f"{done:,}/{total:,}", f"sent {int(job['sent']):,}"]
    parts.append(f"failed {int(job['failed']):,}")
    if int(job["skipped"]):
        parts.append(f"skipped {int(job['skipped']):,}")
    rate = job.get("rate_per_s")
    if rate is not None:
        parts.append(f"{rate:,.0f}/s")
    eta = job.get("eta_s")
    if eta is not None and job["status"] == "running":
        parts.append(f"ETA {_duration(float(eta))}")
    parts.append(str(job["status"]))
    return parts


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    return f"{minutes // 60}h{minutes % 60:02d}m"


def _bar(job: Mapping[str, Any], width: int) -> Text:
    total = max(1, int(job["total"]))
    bar = Text()
    used = 0
    for field, style in (("sent", "green"), ("failed", "red"), ("skipped", "yellow")):
        cells = round(width * int(job[field]) / total)
        cells = min(cells, width - used)
        bar.append("━" * cells, style=style)
        used += cells
    bar.append("━" * (width - used), style="grey37")
    return bar


def line(job: Mapping[str, Any], width: int) -> Text:
    """The job as one line of at most ``width`` cells: the bar shrinks first, then the words
    of least importance (status is kept to the end, then cut)."""
    parts = _parts(job)
    keep = [*parts]
    # drop ETA, rate, skipped, failed... from the middle, never the share or the status
    droppable = parts[2:-1][::-1]
    while True:
        words = "  ".join(keep)
        room = width - len(words) - 1
        if room >= _BAR_MIN or not droppable:
            break
        keep.remove(droppable.pop(0))
    text = Text()
    if room >= _BAR_MIN:
        text.append_text(_bar(job, min(room, _BAR_MAX)))
        text.append(" ")
    text.append(words)
    text.truncate(width, overflow="ellipsis")
    return text


def plain(job: Mapping[str, Any], width: int = 100) -> str:
    """The line without colour, for logs and the non-terminal output."""
    return line(job, width).plain


class _Line:
    """A renderable that draws the latest job at the width rich gives it."""

    def __init__(self) -> None:
        self.job: Mapping[str, Any] | None = None

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        if self.job is not None:
            # Spare cells at the end: the "^C" a terminal echoes must not wrap the line, or the
            # redraw would clear only the wrapped part and leave two lines.
            yield line(self.job, max(20, options.max_width - _SPARE))


class Display:
    """``with Display(console) as d: d.update(job) ...; d.final(job)``; on a terminal the line
    redraws in place; ``interrupted()`` ends it with the last line (Ctrl-C)."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True, highlight=False)
        self._line = _Line()
        self._live: Live | None = None
        self._last_plain = 0.0

    def __enter__(self) -> Display:
        if self.console.is_terminal:
            # Stopping leaves the last line drawn: the final one.
            self._live = _live(self.console, self._line, transient=False)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop()

    def _stop(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def update(self, job: Mapping[str, Any]) -> None:
        self._line.job = job
        if self._live is not None:
            self._live.refresh()
        elif time.monotonic() - self._last_plain >= _PLAIN_EVERY_S:
            self.console.print(plain(job, self.console.width), soft_wrap=True)
            self._last_plain = time.monotonic()

    def final(self, job: Mapping[str, Any]) -> None:
        """Leave exactly one line: the job as it ended."""
        self._line.job = job
        if self._live is not None:
            self._stop()  # redraws the line in place a last time, then a newline
        else:
            self.console.print(plain(job, self.console.width), soft_wrap=True)

    def interrupted(self) -> None:
        """Ctrl-C: the last line as it was, redrawn over the ^C the terminal echoed, then a
        newline; the caller says what happens next."""
        self._stop()


def _live(console: Console, renderable: Any, transient: bool) -> Live:
    """A started line redrawn only when told (no refresh thread), leaving stdout alone."""
    live = Live(
        renderable,
        console=console,
        auto_refresh=False,
        transient=transient,
        redirect_stdout=False,
        redirect_stderr=False,
    )
    live.start()
    return live


class TextLine:
    """A line of text redrawn in place on a terminal (cut to its width), then printed once
    whole: ``with TextLine() as t: t.update(s) ...; t.final(s)``."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True, highlight=False)
        self._live: Live | None = None

    def __enter__(self) -> TextLine:
        if self.console.is_terminal:
            self._live = _live(self.console, Text(""), transient=True)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def update(self, text: str) -> None:
        if self._live is not None:
            self._live.update(Text(text, no_wrap=True, overflow="ellipsis"), refresh=True)

    def final(self, text: str) -> None:
        self.__exit__(None, None, None)
        print(text, flush=True)
