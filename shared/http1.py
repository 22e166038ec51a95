"""A small HTTP/1.1 client pool made for one job: many small POSTs to one origin, fast.

Why not a general client: on this 2-core machine a bare aiohttp loop manages ~5,000 POSTs/s
against fakegraph with its own core saturated, and httpx's default transport a few hundred
(bench/http_clients.py); the consumer has to do 10,000/s *and* keep its ledger. This pool
keeps persistent keep-alive connections (one request at a time on each, no pipelining),
writes each request as one pre-framed buffer, and parses answers with httptools (the C
parser uvicorn uses), which handles Content-Length and chunked bodies. TLS is asyncio's, with
the system's CAs, hostname checks and SNI (``ssl.create_default_context``).

Behind an egress proxy (``proxy``, chosen from HTTPS_PROXY/NO_PROXY by ``shared.proxies``): an
https origin is reached through a ``CONNECT`` tunnel, TLS end to end inside it, so the proxy
sees the host name and never a token; an http origin gets absolute-form requests (plain
forwarding). Credentials in the proxy URL go as ``Proxy-Authorization: Basic`` to the proxy
only. A connection the server closed while idle is dropped before reuse, never written to.

What it does not do, on purpose: redirects, cookies, compression (no Accept-Encoding is sent,
so the answer comes as identity), HTTP/2, https:// proxies.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import time
from collections import deque
from urllib.parse import unquote, urlsplit

import httptools

_MAX_BODY = 256 * 1024
_IDLE_S = 20.0  # drop connections idle longer than this rather than race the server's timeout
_MAX_PROXY_HEAD = 16 * 1024


class HttpError(Exception):
    """No (complete) answer: ``kind`` is "timeout" or "connection"; ``sent`` says whether the
    request had been written, so the provider may have acted on it."""

    def __init__(self, kind: str, sent: bool, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind
        self.sent = sent
        self.detail = detail  # what went wrong, for the log (a TLS or proxy refusal)


class Answer:
    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: dict[bytes, bytes], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


class _Connection(asyncio.Protocol):
    """One keep-alive connection; one request in flight at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[Answer] | None = None
        self.headers: dict[bytes, bytes] = {}
        self.body: list[bytes] = []
        self.size = 0
        self.reusable = False
        self.last_used = 0.0

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._fail("connection")

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.reusable = False
        self._fail("connection")

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.lower()] = value

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        if self.size <= _MAX_BODY:
            self.body.append(body)

    def on_message_complete(self) -> None:
        waiter = self.waiter
        self.waiter = None
        self.reusable = self.parser.should_keep_alive()
        answer = Answer(self.parser.get_status_code(), self.headers, b"".join(self.body))
        if waiter is not None and not waiter.done():
            waiter.set_result(answer)

    def _fail(self, kind: str) -> None:
        waiter = self.waiter
        self.waiter = None
        if waiter is not None and not waiter.done():
            waiter.set_exception(HttpError(kind, sent=True))

    def close(self) -> None:
        self.reusable = False
        if self.transport is not None:
            self.transport.close()

    def send(self, request: bytes) -> asyncio.Future[Answer]:
        assert self.transport is not None
        self.headers = {}
        self.body = []
        self.size = 0
        self.reusable = False
        self.waiter = self.loop.create_future()
        self.transport.write(request)
        return self.waiter


class _Tunnel(asyncio.Protocol):
    """Asks a proxy for a ``CONNECT`` tunnel and reads its answer, up to the blank line."""

    def __init__(self, request: bytes, loop: asyncio.AbstractEventLoop) -> None:
        self.request = request
        self.head = b""
        self.established: asyncio.Future[None] = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.head += data
        end = self.head.find(b"\r\n\r\n")
        if end < 0:
            if len(self.head) > _MAX_PROXY_HEAD:
                self._fail("the proxy's answer to CONNECT has no end")
            return
        status_line = self.head.split(b"\r\n", 1)[0]
        version, _, rest = status_line.partition(b" ")
        if not (version.startswith(b"HTTP/1.") and rest[:1] == b"2"):
            self._fail(f"the proxy answered CONNECT with {status_line[:80].decode('latin-1')!r}")
        elif len(self.head) > end + 4:
            self._fail("the proxy sent data before the TLS handshake")
        elif not self.established.done():
            self.established.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail("the proxy closed the connection")

    def _fail(self, detail: str) -> None:
        if not self.established.done():
            self.established.set_exception(HttpError("connection", sent=False, detail=detail))


class Pool:
    """Connections to one origin, at most ``limit`` of them, reused LIFO; through ``proxy``
    (an http:// URL) when given."""

    def __init__(
        self,
        base_url: str,
        limit: int,
        timeout_s: float,
        proxy: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.ssl: ssl.SSLContext | None = None
        if parts.scheme == "https":
            self.ssl = ssl_context or ssl.create_default_context()
        default_port = self.port == (443 if self.ssl else 80)
        host_header = self.host if default_port else f"{self.host}:{self.port}"
        self.base_path = parts.path.rstrip("/")
        self.host_line = b"Host: " + host_header.encode("idna") + b"\r\n"
        # Where TCP goes: the origin, or the proxy. An https origin is tunnelled (CONNECT);
        # an http origin is forwarded, so its requests name the whole URL (absolute form).
        self.connect_to = (self.host, self.port)
        self.tunnel: bytes | None = None
        self.proxy_line = b""
        if proxy is not None:
            via = urlsplit(proxy)
            if via.scheme != "http" or not via.hostname:
                raise ValueError("the proxy must be an http:// URL")
            self.connect_to = (via.hostname, via.port or 80)
            if via.username is not None:
                user_pass = f"{unquote(via.username)}:{unquote(via.password or '')}"
                basic = base64.b64encode(user_pass.encode()).decode()
                self.proxy_line = f"Proxy-Authorization: Basic {basic}\r\n".encode()
            if self.ssl is not None:
                authority = f"{self.host}:{self.port}".encode("idna")
                self.tunnel = (
                    b"CONNECT "
                    + authority
                    + b" HTTP/1.1\r\nHost: "
                    + authority
                    + b"\r\n"
                    + self.proxy_line
                    + b"\r\n"
                )
                self.proxy_line = b""  # inside the tunnel the proxy reads nothing
            else:
                self.base_path = f"http://{host_header}{self.base_path}"
        self.timeout_s = timeout_s
        self._idle: list[_Connection] = []
        # A slot count and a FIFO of waiters rather than an asyncio.Semaphore: the consumer's
        # senders never outnumber the slots, so the common case is one integer test.
        self._free = limit
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._all: set[_Connection] = set()
        # Requests in flight and when each times out, checked by one sweep (``_sweep``) every
        # ``_sweep_s`` while any are in flight, instead of a timer armed and cancelled per
        # request: a timeout fires between timeout_s and timeout_s + _sweep_s after the send.
        self._busy: dict[_Connection, float] = {}
        self._sweep_s = min(1.0, max(0.01, timeout_s / 10))
        self._sweeper: asyncio.TimerHandle | None = None

    def frame_post(self, path: str, headers: bytes) -> tuple[bytes, bytes]:
        """The parts of a POST to ``path`` before and after its Content-Length value;
        ``headers`` are extra header lines, each ending in CRLF."""
        head = (
            b"POST "
            + (self.base_path + path).encode()
            + b" HTTP/1.1\r\n"
            + self.host_line
            + self.proxy_line
            + b"Content-Type: application/json\r\nUser-Agent: fanout\r\n"
            + headers
            + b"Content-Length: "
        )
        return head, b"\r\n\r\n"

    async def _connection(self) -> _Connection:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if conn.transport is not None and now - conn.last_used < _IDLE_S:
                return conn
            conn.close()
            self._all.discard(conn)
        try:
            conn = await asyncio.wait_for(self._open(), self.timeout_s)
        except TimeoutError:
            raise HttpError("timeout", sent=False) from None
        except OSError as exc:  # refused, reset, and every TLS failure (ssl.SSLError)
            raise HttpError("connection", sent=False, detail=str(exc)) from None
        self._all.add(conn)
        return conn

    async def _open(self) -> _Connection:
        loop = asyncio.get_running_loop()
        host, port = self.connect_to
        request, tls_context = self.tunnel, self.ssl
        if request is None or tls_context is None:  # direct, or an http origin via a proxy
            ssl_context = self.ssl if self.connect_to == (self.host, self.port) else None
            _, conn = await loop.create_connection(
                lambda: _Connection(loop), host, port, ssl=ssl_context
            )
            return conn
        raw, tunnel = await loop.create_connection(lambda: _Tunnel(request, loop), host, port)
        try:
            await tunnel.established
            conn = _Connection(loop)
            tls = await loop.start_tls(raw, conn, tls_context, server_hostname=self.host)
        except BaseException:
            raw.close()
            raise
        if tls is None:  # the loop closed the transport meanwhile
            raise HttpError("connection", sent=False, detail="closed during the TLS handshake")
        conn.connection_made(tls)
        return conn

    async def post(self, head: tuple[bytes, bytes], body: bytes) -> Answer:
        """POST ``body`` with a request head from ``frame_post``; raises HttpError."""
        if self._free > 0 and not self._waiters:
            self._free -= 1
        else:
            await self._slot()
        try:
            conn = await self._connection()
            future = conn.send(head[0] + b"%d" % len(body) + head[1] + body)
            now = time.monotonic()
            self._busy[conn] = now + self.timeout_s
            if self._sweeper is None:
                self._sweeper = asyncio.get_running_loop().call_later(self._sweep_s, self._sweep)
            try:
                answer = await future
            except BaseException:
                conn.close()
                self._all.discard(conn)
                raise
            finally:
                del self._busy[conn]
            if conn.reusable:
                conn.last_used = time.monotonic()
                self._idle.append(conn)
            else:
                conn.close()
                self._all.discard(conn)
            return answer
        finally:
            self._release()

    async def _slot(self) -> None:
        """Wait for a free slot, first come first served."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            # Cancelled after the slot was handed over: pass it on, not lose it.
            if waiter.done() and not waiter.cancelled():
                self._release()
            raise

    def _release(self) -> None:
        """A slot is free: to the first live waiter, or back to the count."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1

    def _sweep(self) -> None:
        """Time out requests past their deadline; again in ``_sweep_s`` while any are left."""
        self._sweeper = None
        now = time.monotonic()
        for conn, deadline in list(self._busy.items()):
            if now >= deadline:
                waiter = conn.waiter
                if waiter is not None:
                    _expire(conn, waiter)
        if self._busy:
            self._sweeper = asyncio.get_running_loop().call_later(self._sweep_s, self._sweep)

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for conn in self._all:
            conn.close()
        self._all.clear()
        self._idle.clear()


def _expire(conn: _Connection, future: asyncio.Future[Answer]) -> None:
    if not future.done():
        future.set_exception(HttpError("timeout", sent=True))
    conn.close()
