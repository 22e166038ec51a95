"""HTTP/1.1 on a raw `asyncio.Protocol`: httptools parsing, keep-alive, pipelining, latency.

The parser is fed whatever bytes arrive, so a request split over reads and several
requests in one read are both just callbacks. Answers are written in request order:
with no latency they are collected during one read and written with one `write()`; with
`latency_ms` they wait in a per-connection queue released by one event-loop timer.
A connection is closed after the answer to a `Connection: close` (or HTTP/1.0 without
keep-alive) request, after a malformed request, and when the client goes away (queued
answers are then dropped; the sends were already counted).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import cast

import httptools

from services.fakegraph import responses as r
from services.fakegraph.graph import CUT, HANG, HTML_502, FakeGraph

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 1 << 20
"""A larger request body is refused (413, code 100) and the connection closed."""
_RELEASE_SLACK = 0.0005
"""Seconds: a queued answer this close to its due time goes out with the current batch."""
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_HTML_502 = (
    b"<html><head><title>502 Bad Gateway</title></head>"
    b"<body><center><h1>502 Bad Gateway</h1></center></body></html>"
)


class GraphProtocol(asyncio.Protocol):
    """One client connection."""

    def __init__(self, fake: FakeGraph, loop: asyncio.AbstractEventLoop) -> None:
        self._fake = fake
        self._loop = loop
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        # the request being parsed
        self._url = b""
        self._authorization: bytes | None = None
        self._body: list[bytes] = []
        self._body_size = 0
        self._said_keep_alive = False
        # answers
        self._out: list[bytes] = []
        self._delayed: deque[tuple[float, bytes]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._closing = False
        self._silent = False
        """An answer that never comes (`hang_rate`): read nothing more, write nothing, and
        keep the connection open until the client gives up."""
        """No more requests are read; close once every queued answer is written."""

    # ---- asyncio.Protocol ----

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # a stream server's transport
        self._fake.connections.add(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            self._fake.connections.discard(self._transport)
        self._transport = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._delayed.clear()
        self._out.clear()

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError:
            if not self._closing:
                logger.exception("fakegraph: failed to answer a request")
                self._refuse(r.INTERNAL)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            if not self._closing:  # bytes after a `Connection: close` request are ignored
                self._refuse(r.MALFORMED_REQUEST)
        self._flush()

    def eof_received(self) -> bool | None:
        if self._delayed:
            self._closing = True
            return True  # keep the write side open for the queued answers
        return None

    def pause_writing(self) -> None:
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()

    # ---- httptools callbacks ----

    def on_message_begin(self) -> None:
        self._url = b""
        self._authorization = None
        self._body = []
        self._body_size = 0
        self._said_keep_alive = False

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        size = len(name)
        if size == 13 and name.lower() == b"authorization":
            self._authorization = value
        elif size == 10 and name.lower() == b"connection" and value.lower() == b"keep-alive":
            self._said_keep_alive = True  # an HTTP/1.0 client wants it said back
        elif size == 6 and name.lower() == b"expect" and value.lower() == b"100-continue":
            self._out.append(_CONTINUE)

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size <= MAX_BODY_BYTES:
            self._body.append(body)

    def on_message_complete(self) -> None:
        if self._closing:
            return
        keep_alive = self._parser.should_keep_alive()
        if self._body_size > MAX_BODY_BYTES:
            status, payload = self._fake.answer_error(r.BODY_TOO_LARGE)
            keep_alive = False
        else:
            chunks = self._body
            body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            status, payload = self._fake.respond(
                self._parser.get_method(), self._url, self._authorization, body
            )
        if not keep_alive:
            end = r.END_CLOSE
            self._closing = True
        elif self._said_keep_alive:
            end = r.END_KEEP_ALIVE_10
        else:
            end = r.END_KEEP_ALIVE
        if status < 0:
            self._spoil(status, payload, end)
            return
        self._answer(r.frame(status, payload, end))

    def _spoil(self, status: int, payload: bytes, end: bytes) -> None:
        """A delivered send's answer gone bad (the statuses of graph.py's bad-answer knobs)."""
        if status == HANG:
            self._closing = self._silent = True
            return
        if status == CUT:
            whole = r.frame(200, payload, end)
            self._closing = True  # closed once the half answer is written
            self._answer(whole[: len(whole) - len(payload) // 2 - 1])
            return
        if status == HTML_502:
            head, body = b"502 Bad Gateway", _HTML_502
        else:
            head, body = b"200 OK", b"<html><body>OK</body></html>"
        self._answer(
            b"HTTP/1.1 %b\r\nContent-Type: text/html\r\nContent-Length: %d%b%b"
            % (head, len(body), end, body)
        )

    # ---- writing ----

    def _answer(self, response: bytes) -> None:
        latency_ms = self._fake.config.latency_ms
        delayed = self._delayed
        if latency_ms <= 0 and not delayed:
            self._out.append(response)
            return
        due = self._loop.time() + latency_ms / 1000.0
        if delayed and due < delayed[-1][0]:
            due = delayed[-1][0]  # latency lowered meanwhile: still answer in order
        delayed.append((due, response))
        if self._timer is None:
            self._timer = self._loop.call_at(due, self._release)

    def _release(self) -> None:
        self._timer = None
        delayed = self._delayed
        horizon = self._loop.time() + _RELEASE_SLACK
        while delayed and delayed[0][0] <= horizon:
            self._out.append(delayed.popleft()[1])
        if delayed:
            self._timer = self._loop.call_at(delayed[0][0], self._release)
        self._flush()

    def _refuse(self, error: r.GraphError) -> None:
        status, payload = self._fake.answer_error(error)
        self._closing = True
        self._answer(r.frame(status, payload, r.END_CLOSE))

    def _flush(self) -> None:
        transport = self._transport
        if transport is None:
            return
        out = self._out
        if out:
            transport.write(out[0] if len(out) == 1 else b"".join(out))
            out.clear()
        if self._closing and not self._delayed and not self._silent:
            transport.close()
