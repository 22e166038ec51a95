"""The provider client (shared/http1.py) on real networks: TLS against a local server with a CA
made here (trustme), checked as a browser would (chain, host name, dates, SNI); a server that
drops idle keep-alive connections; and the egress proxy read from HTTPS_PROXY/NO_PROXY, through
a local CONNECT proxy that sees the tunnel's bytes, never a token. Each test runs on asyncio's
loop and on uvloop (the consumer's)."""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
import re
import ssl
import threading
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import pytest
import trustme
import uvloop
from conftest import Stack, psids, wait_for

from shared.http1 import HttpError, Pool
from shared.proxies import ProxyError, proxy_for
from shared.settings import SettingsError, consumer_settings

TOKEN = b"EAAtlstesttoken0123456789"
BODY = b'{"recipient":{"id":"1"},"message":{"text":"hi"}}'
ANSWER = b'{"recipient_id":"1","message_id":"m1"}'

LOOPS: list[Callable[[], asyncio.AbstractEventLoop]] = [
    asyncio.new_event_loop,
    uvloop.new_event_loop,
]


def run(loop_factory: Callable[[], asyncio.AbstractEventLoop], coro: Awaitable[Any]) -> Any:
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(asyncio.wait_for(coro, 20))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


class Origin:
    """An HTTPS (or plain) keep-alive server answering every POST with Graph's success JSON.
    It counts connections, records the SNI each handshake asked for, and with ``idle_close_s``
    closes a connection idle that long, as load balancers do."""

    def __init__(self, cert: trustme.LeafCert | None, idle_close_s: float | None = None) -> None:
        self.context: ssl.SSLContext | None = None
        self.server_names: list[str | None] = []
        if cert is not None:
            self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            cert.configure_cert(self.context)
            self.context.sni_callback = self._sni
        self.idle_close_s = idle_close_s
        self.connections = 0
        self.requests: list[bytes] = []
        self.port = 0
        self.server: asyncio.Server | None = None

    def _sni(self, sock: ssl.SSLObject, name: str | None, context: ssl.SSLContext) -> None:
        self.server_names.append(name)

    async def start(self) -> Origin:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.context)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                wait = self.idle_close_s
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), wait)
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                self.requests.append(head + await reader.readexactly(length))
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(ANSWER), ANSWER)
                )
                await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()


class ConnectProxy:
    """An egress proxy: CONNECT opens a blind tunnel to the target; any other method is
    answered by the proxy itself (as if forwarded). It records every request head it reads
    and every byte it relays, and with ``credentials`` demands Proxy-Authorization (407)."""

    def __init__(self, credentials: str | None = None) -> None:
        self.credentials = credentials
        self.heads: list[bytes] = []
        self.relayed = bytearray()
        self.port = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> ConnectProxy:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        user = f"{self.credentials}@" if self.credentials else ""
        return f"http://{user}127.0.0.1:{self.port}"

    def _authorised(self, head: bytes) -> bool:
        if self.credentials is None:
            return True
        expected = base64.b64encode(self.credentials.encode())
        return b"Proxy-Authorization: Basic " + expected in head

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            self.heads.append(head)
            if not self._authorised(head):
                writer.write(
                    b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n"
                )
                return
            method, target, _ = head.split(b"\r\n", 1)[0].split(b" ", 2)
            if method != b"CONNECT":
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(ANSWER), ANSWER)
                )
                return
            host, _, port = target.decode().rpartition(":")
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                self.relayed += data
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()


def frame(pool: Pool) -> tuple[bytes, bytes]:
    return pool.frame_post("/v21.0/me/messages", b"Authorization: Bearer " + TOKEN + b"\r\n")


async def post_once(pool: Pool) -> bytes:
    try:
        answer = await pool.post(frame(pool), BODY)
    finally:
        await pool.close()
    assert answer.status == 200
    return answer.body


# --- TLS ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("loop", LOOPS)
def test_a_good_certificate_is_trusted_and_sni_names_the_host(
    ca: trustme.CA, loop: Callable[[], asyncio.AbstractEventLoop]
) -> None:
    async def scenario() -> None:
        origin = await Origin(ca.issue_cert("localhost")).start()
        pool = Pool(f"https://localhost:{origin.port}", 4, 5, ssl_context=client_context(ca))
        assert await post_once(pool) == ANSWER
        await origin.stop()
        assert origin.server_names == ["localhost"]
        assert origin.requests[0].startswith(b"POST /v21.0/me/messages HTTP/1.1\r\n")
        assert f"Host: localhost:{origin.port}\r\n".encode() in origin.requests[0]

    run(loop, scenario())


@pytest.mark.parametrize(
    ("name", "cert_for", "expected"),
    [
        ("wrong host", {"identities": ("graph.example.net",)}, "match"),
        (
            "expired",
            {
                "identities": ("localhost",),
                "not_before": datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC),
                "not_after": datetime.datetime(2021, 1, 1, tzinfo=datetime.UTC),
            },
            "expired",
        ),
        ("unknown CA", None, "unable to get local issuer"),
    ],
)
@pytest.mark.parametrize("loop", LOOPS)
def test_a_bad_certificate_is_refused_before_anything_is_sent(
    ca: trustme.CA,
    loop: Callable[[], asyncio.AbstractEventLoop],
    name: str,
    cert_for: dict[str, Any] | None,
    expected: str,
) -> None:
    async def scenario() -> None:
        if cert_for is None:
            cert = trustme.CA().issue_cert("localhost")  # a CA the client does not trust
        else:
            dates = {k: v for k, v in cert_for.items() if k != "identities"}
            cert = ca.issue_cert(*cert_for["identities"], **dates)
        origin = await Origin(cert).start()
        pool = Pool(f"https://localhost:{origin.port}", 4, 5, ssl_context=client_context(ca))
        with pytest.raises(HttpError) as refused:
            await post_once(pool)
        await origin.stop()
        assert refused.value.kind == "connection" and refused.value.sent is False
        assert "certificate verify failed" in refused.value.detail, refused.value.detail
        assert expected in refused.value.detail, refused.value.detail
        assert origin.requests == []  # the token never left

    run(loop, scenario())


@pytest.mark.parametrize("loop", LOOPS)
def test_a_server_that_drops_idle_connections_costs_no_failed_request(
    ca: trustme.CA, loop: Callable[[], asyncio.AbstractEventLoop]
) -> None:
    async def scenario() -> None:
        origin = await Origin(ca.issue_cert("localhost"), idle_close_s=0.2).start()
        pool = Pool(f"https://localhost:{origin.port}", 4, 5, ssl_context=client_context(ca))
        clock = asyncio.get_running_loop().time
        try:
            for _ in range(3):
                for _ in range(5):  # back to back: one kept-alive connection serves them all
                    assert (await pool.post(frame(pool), BODY)).status == 200
                # Idle past the server's timeout, until it has closed the connection (TLS
                # close_notify, then FIN); the next POST must open a new one, not fail.
                deadline = clock() + 5
                while any(conn.transport is not None for conn in pool._idle):
                    assert clock() < deadline, "the server never closed the idle connection"
                    await asyncio.sleep(0.02)
        finally:
            await pool.close()
            await origin.stop()
        assert len(origin.requests) == 15
        assert origin.connections == 3  # one per burst: reused within, replaced after idling

    run(loop, scenario())


# --- proxy -------------------------------------------------------------------------------------


@pytest.mark.parametrize("loop", LOOPS)
def test_https_through_a_connect_proxy_end_to_end_tls(
    ca: trustme.CA, loop: Callable[[], asyncio.AbstractEventLoop]
) -> None:
    async def scenario() -> None:
        origin = await Origin(ca.issue_cert("localhost")).start()
        proxy = await ConnectProxy(credentials="egress:s3cr%et").start()
        url = f"https://localhost:{origin.port}"
        chosen = proxy_for(url, {"HTTPS_PROXY": proxy.url.replace("%", "%25")})
        pool = Pool(url, 4, 5, proxy=chosen, ssl_context=client_context(ca))
        try:
            for _ in range(3):
                assert (await pool.post(frame(pool), BODY)).body == ANSWER
        finally:
            await pool.close()
            await proxy.stop()
            await origin.stop()
        [head] = proxy.heads  # one tunnel, kept alive for all three
        assert head.startswith(f"CONNECT localhost:{origin.port} HTTP/1.1\r\n".encode())
        assert b"Proxy-Authorization: Basic " + base64.b64encode(b"egress:s3cr%et") in head
        assert origin.server_names == ["localhost"] and len(origin.requests) == 3
        assert proxy.relayed and TOKEN not in proxy.relayed and b"recipient" not in proxy.relayed
        assert all(b"Proxy-Authorization" not in r for r in origin.requests)

    run(loop, scenario())


@pytest.mark.parametrize("loop", LOOPS)
def test_a_proxy_that_refuses_the_tunnel_is_a_connection_error(
    ca: trustme.CA, loop: Callable[[], asyncio.AbstractEventLoop]
) -> None:
    async def scenario() -> None:
        proxy = await ConnectProxy(credentials="egress:right").start()
        wrong = f"http://egress:wrong@127.0.0.1:{proxy.port}"
        pool = Pool("https://localhost:9", 4, 5, proxy=wrong, ssl_context=client_context(ca))
        with pytest.raises(HttpError) as refused:
            await post_once(pool)
        await proxy.stop()
        assert (refused.value.kind, refused.value.sent) == ("connection", False)
        assert "407" in refused.value.detail

    run(loop, scenario())


def test_plain_http_through_a_proxy_uses_the_absolute_form() -> None:
    async def scenario() -> None:
        proxy = await ConnectProxy().start()
        pool = Pool("http://graph.internal:8080/base", 4, 5, proxy=proxy.url)
        assert await post_once(pool) == ANSWER
        await proxy.stop()
        [head] = proxy.heads
        assert head.startswith(b"POST http://graph.internal:8080/base/v21.0/me/messages HTTP/1.1")
        assert b"Host: graph.internal:8080\r\n" in head

    run(asyncio.new_event_loop, scenario())


# --- choosing the proxy ------------------------------------------------------------------------

GRAPH = "https://graph.facebook.com"


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, None),
        ({"HTTPS_PROXY": "http://proxy:3128"}, "http://proxy:3128"),
        ({"https_proxy": "proxy:3128"}, "http://proxy:3128"),  # curl reads a bare host:port
        ({"HTTPS_PROXY": "http://a:1", "https_proxy": "http://b:2"}, "http://b:2"),
        ({"HTTP_PROXY": "http://proxy:3128"}, None),  # http's proxy is not https's
        ({"ALL_PROXY": "http://all:1"}, "http://all:1"),
        ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": "*"}, None),
        ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": "facebook.com"}, None),
        ({"HTTPS_PROXY": "http://p:1", "no_proxy": "localhost, .facebook.com"}, None),
        ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": "graph.facebook.com:443"}, None),
        ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": "graph.facebook.com:8443"}, "http://p:1"),
        ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": "book.com,instagram.com"}, "http://p:1"),
    ],
)
def test_the_proxy_is_chosen_as_curl_chooses_it(
    environ: dict[str, str], expected: str | None
) -> None:
    assert proxy_for(GRAPH, environ) == expected


def test_no_proxy_matches_addresses_and_blocks() -> None:
    proxied = {"HTTPS_PROXY": "http://p:1"}
    assert proxy_for("https://10.1.2.3", {**proxied, "NO_PROXY": "10.0.0.0/8"}) is None
    assert proxy_for("https://10.1.2.3", {**proxied, "NO_PROXY": "10.1.2.3"}) is None
    assert proxy_for("https://11.1.2.3", {**proxied, "NO_PROXY": "10.0.0.0/8"}) == "http://p:1"
    assert proxy_for("https://[::1]:8443", {**proxied, "NO_PROXY": "::1"}) is None


def test_the_consumer_settings_carry_the_proxy_and_name_a_bad_one() -> None:
    base = {"FANOUT_PAGE_TOKENS": "1=x", "FANOUT_GRAPH_URL": GRAPH}
    assert consumer_settings(base).graph_proxy is None
    chosen = consumer_settings({**base, "HTTPS_PROXY": "http://u:pw@egress:3128"})
    assert chosen.graph_proxy == "http://u:pw@egress:3128"
    assert (
        consumer_settings({**base, "HTTPS_PROXY": "http://e:1", "NO_PROXY": "*"}).graph_proxy
        is None
    )
    with pytest.raises(SettingsError, match="HTTPS_PROXY must be an http:// proxy URL") as bad:
        consumer_settings({**base, "HTTPS_PROXY": "socks5://u:pw@egress:1080"})
    assert "pw" not in str(bad.value)
    with pytest.raises(ProxyError, match="https_proxy"):
        proxy_for(GRAPH, {"https_proxy": "https://egress:3128"})


# --- the consumer, end to end ------------------------------------------------------------------


class ForwardingProxy:
    """A plain forwarding proxy in a thread of its own (the services are other processes): it
    reads absolute-form requests, forwards each to its origin in origin form over a kept-alive
    upstream connection, and relays the answer. Content-Length bodies only, as fakegraph's."""

    def __init__(self) -> None:
        self.request_lines: list[bytes] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        start = asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.server = asyncio.run_coroutine_threadsafe(start, self.loop).result(10)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    @staticmethod
    async def _message(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
        head = await reader.readuntil(b"\r\n\r\n")
        match = re.search(rb"(?im)^content-length:\s*(\d+)", head)
        return head, await reader.readexactly(int(match.group(1)) if match else 0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            while True:
                head, body = await self._message(reader)
                line, rest = head.split(b"\r\n", 1)
                self.request_lines.append(line)
                method, target, version = line.split(b" ")
                origin = urlsplit(target.decode())
                if upstream is None:
                    upstream = await asyncio.open_connection(origin.hostname, origin.port)
                path = (origin.path or "/") + (f"?{origin.query}" if origin.query else "")
                upstream[1].write(
                    b" ".join([method, path.encode(), version]) + b"\r\n" + rest + body
                )
                answer_head, answer_body = await self._message(upstream[0])
                writer.write(answer_head + answer_body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            if upstream is not None:
                upstream[1].close()
            self.tasks.discard(task)

    async def _close(self) -> None:
        self.server.close()
        for task in list(self.tasks):
            task.cancel()  # each closes its sockets on the way out
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await asyncio.sleep(0)  # let the transports finish closing

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.mark.parametrize("bypass", [False, True])
def test_the_consumer_sends_through_the_proxy_unless_no_proxy_says(
    stack: Stack, bypass: bool
) -> None:
    proxy = ForwardingProxy()
    try:
        fake = stack.start_fakegraph()
        stack.env["HTTP_PROXY"] = proxy.url
        if bypass:
            stack.env["NO_PROXY"] = "localhost,127.0.0.0/8"
        stack.start_producer()
        consumer = stack.start_consumer("c1")
        job = stack.wait_done(stack.submit(psids(40)), 30)
        assert (job["status"], job["sent"]) == ("completed", 40)
        assert fake.stats()["requests"] >= 40
        if bypass:
            assert proxy.request_lines == []
        else:
            sends = [
                line for line in proxy.request_lines if line.endswith(b"/me/messages HTTP/1.1")
            ]
            # every POST fakegraph answered came through the proxy (a resend under load too)
            assert len(sends) == fake.stats()["requests"] >= 40
            assert sends[0].startswith(f"POST {fake.url}/".encode())  # absolute form
        wait_for(lambda: '"msg": "starting"' in consumer.output(), 5, "the start-up line")
        start = next(line for line in consumer.output().splitlines() if '"msg": "starting"' in line)
        assert json.loads(start)["settings"]["graph_proxy"] == (None if bypass else proxy.url)
    finally:
        proxy.stop()
