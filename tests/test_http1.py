"""The provider's HTTP/1.1 pool against a scripted server: framing, keep-alive, chunked
answers, closes, timeouts and dead servers each give the answer or the error they should."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from conftest import free_port

from shared.http1 import HttpError, Pool

Handler = Callable[[bytes], Awaitable[bytes | None]]


async def serve(handler: Handler) -> tuple[asyncio.Server, list[bytes], list[int]]:
    """A server that reads one request at a time and answers what ``handler`` returns
    (None: close without answering). Records each request and each connection."""
    requests: list[bytes] = []
    connections: list[int] = []

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                request = head + await reader.readexactly(length)
                requests.append(request)
                reply = await handler(request)
                if reply is None:
                    break
                writer.write(reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(client, "127.0.0.1", 0)
    return server, requests, connections


def url(server: asyncio.Server) -> str:
    port = server.sockets[0].getsockname()[1]
    return f"http://127.0.0.1:{port}/base"


OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


async def ok(request: bytes) -> bytes:
    return OK


def test_frames_the_request_and_reuses_one_connection() -> None:
    async def main() -> None:
        server, requests, connections = await serve(ok)
        pool = Pool(url(server), 4, 5)
        head = pool.frame_post("/v1/me/messages", b"Authorization: Bearer t\r\n")
        for _ in range(3):
            answer = await pool.post(head, b'{"a":1}')
            assert (answer.status, answer.body) == (200, b"{}")
        port = server.sockets[0].getsockname()[1]
        assert requests[0] == (
            b"POST /base/v1/me/messages HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
            b"Content-Type: application/json\r\nUser-Agent: fanout\r\nAuthorization: Bearer t\r\n"
            b'Content-Length: 7\r\n\r\n{"a":1}' % port
        )
        assert len(connections) == 1  # kept alive
        await pool.close()
        server.close()

    asyncio.run(main())


def test_chunked_answer_and_headers() -> None:
    async def chunked(request: bytes) -> bytes:
        return (
            b"HTTP/1.1 400 Bad Request\r\nRetry-After: 7\r\nTransfer-Encoding: chunked\r\n\r\n"
            b'5\r\n{"err\r\n3\r\nor"\r\n3\r\n:1}\r\n0\r\n\r\n'
        )

    async def main() -> None:
        server, _, _ = await serve(chunked)
        pool = Pool(url(server), 1, 5)
        answer = await pool.post(pool.frame_post("/x", b""), b"{}")
        assert answer.status == 400
        assert answer.body == b'{"error":1}'
        assert answer.headers[b"retry-after"] == b"7"
        await pool.close()
        server.close()

    asyncio.run(main())


def test_connection_close_answer_opens_a_new_connection() -> None:
    async def closing(request: bytes) -> bytes:
        return b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}"

    async def main() -> None:
        server, _, connections = await serve(closing)
        pool = Pool(url(server), 1, 5)
        for _ in range(3):
            assert (await pool.post(pool.frame_post("/x", b""), b"{}")).status == 200
        assert len(connections) == 3
        await pool.close()
        server.close()

    asyncio.run(main())


def test_no_answer_is_a_connection_error_after_sending() -> None:
    async def hang_up(request: bytes) -> None:
        return None

    async def main() -> None:
        server, _, _ = await serve(hang_up)
        pool = Pool(url(server), 1, 5)
        with pytest.raises(HttpError) as caught:
            await pool.post(pool.frame_post("/x", b""), b"{}")
        assert (caught.value.kind, caught.value.sent) == ("connection", True)
        await pool.close()
        server.close()

    asyncio.run(main())


def test_slow_answer_is_a_timeout_and_the_pool_recovers() -> None:
    calls = 0

    async def slow_once(request: bytes) -> bytes:
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.sleep(5)  # the server side of the test: far longer than the timeout
        return OK

    async def main() -> None:
        server, _, _ = await serve(slow_once)
        pool = Pool(url(server), 1, 0.2)
        with pytest.raises(HttpError) as caught:
            await pool.post(pool.frame_post("/x", b""), b"{}")
        assert (caught.value.kind, caught.value.sent) == ("timeout", True)
        assert (await pool.post(pool.frame_post("/x", b""), b"{}")).status == 200
        await pool.close()
        server.close()

    asyncio.run(main())


def test_nobody_listening_is_a_connection_error_before_sending() -> None:
    async def main() -> None:
        pool = Pool(f"http://127.0.0.1:{free_port()}", 1, 2)
        with pytest.raises(HttpError) as caught:
            await pool.post(pool.frame_post("/x", b""), b"{}")
        assert (caught.value.kind, caught.value.sent) == ("connection", False)

    asyncio.run(main())


def test_rejects_non_http_urls() -> None:
    with pytest.raises(ValueError, match="not an http"):
        Pool("ftp://example.com", 1, 1)
