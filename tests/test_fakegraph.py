"""fakegraph: answers, error shapes, stats, live config, and HTTP framing over raw sockets.

One server runs in a background thread with its own event loop for the whole module;
every test starts from the default config and empty stats (through the test hooks).
"""

from __future__ import annotations

import asyncio
import json
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httptools
import httpx
import msgspec
import pytest

from services.fakegraph.server import (
    FakeGraph,
    FakeGraphConfig,
    create_server,
    loop_factory,
    main,
    serve,
)

SEND = "/v21.0/me/messages"
AUTH = {"Authorization": "Bearer test-token"}
ROOT = Path(__file__).resolve().parent.parent


def message(psid: str = "100", text: str = "hello", **extra: Any) -> dict[str, Any]:
    return {"recipient": {"id": psid}, "message": {"text": text}, **extra}


# ---- the server under test ----


class ServerThread:
    """fakegraph on 127.0.0.1:<free port>, served by an event loop in a daemon thread."""

    def __init__(self) -> None:
        self.fake = create_server(FakeGraphConfig())
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="fakegraph", daemon=True)

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(timeout=10) or self._error is not None:
            raise RuntimeError("fakegraph did not start") from self._error

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        loop = loop_factory()()
        self._loop = loop
        try:
            server = loop.run_until_complete(serve(self.fake, "127.0.0.1", 0))
            self.port = server.sockets[0].getsockname()[1]
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        loop.run_forever()

        async def shut() -> None:
            server.close()
            self.fake.close_connections()
            await server.wait_closed()
            await asyncio.sleep(0)  # let connection_lost callbacks run

        loop.run_until_complete(shut())
        loop.close()


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    thread = ServerThread()
    thread.start()
    yield thread
    thread.stop()


@pytest.fixture(scope="module")
def http(server: ServerThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=5.0) as client:
        yield client


@pytest.fixture
def fake(server: ServerThread, http: httpx.Client) -> FakeGraph:
    """The live FakeGraph, reset to the default config and empty stats."""
    defaults = msgspec.to_builtins(FakeGraphConfig())
    assert http.post("/_fake/config", json=defaults).status_code == 200
    assert http.post("/_fake/reset").status_code == 200
    return server.fake


def stats(http: httpx.Client) -> dict[str, Any]:
    answer = http.get("/_fake/stats")
    assert answer.status_code == 200
    result: dict[str, Any] = answer.json()
    return result


def assert_graph_error(
    answer: httpx.Response, status: int, code: int, subcode: int | None = None
) -> dict[str, Any]:
    assert answer.status_code == status
    assert answer.headers["content-type"] == "application/json; charset=UTF-8"
    error: dict[str, Any] = answer.json()["error"]
    assert error["code"] == code
    assert error["type"] == "OAuthException"
    assert len(error["fbtrace_id"]) == 11
    if subcode is None:
        assert "error_subcode" not in error
    else:
        assert error["error_subcode"] == subcode
    return error


# ---- sends ----


def test_success_answers_recipient_and_message_id(fake: FakeGraph, http: httpx.Client) -> None:
    answer = http.post(SEND, json=message("1234", messaging_type="UPDATE"), headers=AUTH)
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/json; charset=UTF-8"
    assert int(answer.headers["content-length"]) == len(answer.content)
    body = answer.json()
    assert set(body) == {"recipient_id", "message_id"}
    assert body["recipient_id"] == "1234"
    assert body["message_id"].startswith("m_")
    again = http.post("/v21.0/555/messages", json=message("1234"), headers=AUTH).json()
    assert again["message_id"] != body["message_id"]


def test_token_from_header_query_or_body(fake: FakeGraph, http: httpx.Client) -> None:
    fake.configure(tokens={"tok-a": "PAGE_A", "tok-b": "PAGE_B"})
    assert http.post(SEND, json=message("1"), headers={"Authorization": "Bearer tok-a"}).is_success
    assert http.post(SEND, params={"access_token": "tok-b"}, json=message("2")).is_success
    assert http.post(SEND, json=message("3", access_token="tok-a")).is_success
    assert http.get("/_fake/delivered").json() == {
        "PAGE_A": {"1": 1, "3": 1},
        "PAGE_B": {"2": 1},
    }


def test_missing_or_unknown_token_is_190(fake: FakeGraph, http: httpx.Client) -> None:
    error = assert_graph_error(http.post(SEND, json=message()), 400, 190)
    assert error["message"] == "Invalid OAuth access token - Cannot parse access token"
    assert "is_transient" not in error
    fake.configure(tokens={"tok-a": "PAGE_A"})
    unknown = http.post(SEND, json=message(), headers={"Authorization": "Bearer nope"})
    assert_graph_error(unknown, 400, 190)
    assert stats(http)["delivered"] == 0


def test_revoked_is_190_subcode_463(fake: FakeGraph, http: httpx.Client) -> None:
    fake.configure(revoked=True)
    error = assert_graph_error(http.post(SEND, json=message(), headers=AUTH), 400, 190, 463)
    assert error["message"].startswith("Error validating access token: The session has been")


@pytest.mark.parametrize(
    ("body", "text"),
    [
        (b"{not json", "(#100) Invalid parameter"),
        (b'{"message":{"text":"x"}}', "(#100) The parameter recipient is required"),
        (b'{"recipient":{},"message":{"text":"x"}}', "(#100) The parameter recipient is required"),
        (b'{"recipient":{"id":"1"}}', "(#100) Must send either message or sender action"),
        (b'{"recipient":{"id":"1"},"message":{}}', "(#100) Message cannot be empty"),
    ],
)
def test_bad_body_is_100(fake: FakeGraph, http: httpx.Client, body: bytes, text: str) -> None:
    answer = http.post(SEND, content=body, headers=AUTH)
    assert assert_graph_error(answer, 400, 100)["message"].startswith(text)
    assert stats(http)["by_code"] == {"100": 1}


def test_fail_rate_is_500_code_2_transient_not_delivered(
    fake: FakeGraph, http: httpx.Client
) -> None:
    fake.configure(fail_rate=1.0)
    error = assert_graph_error(http.post(SEND, json=message(), headers=AUTH), 500, 2)
    assert error["is_transient"] is True
    assert error["message"] == "An unexpected error has occurred. Please retry your request later."
    counts = stats(http)
    assert (counts["requests"], counts["delivered"], counts["by_code"]) == (1, 0, {"2": 1})


def test_fail_rate_fraction_is_seeded(fake: FakeGraph, http: httpx.Client) -> None:
    def outcomes() -> list[int]:
        http.post("/_fake/reset")
        return [http.post(SEND, json=message(str(n)), headers=AUTH).status_code for n in range(60)]

    fake.configure(fail_rate=0.5, seed=7)
    first = outcomes()
    assert 10 < first.count(500) < 50
    assert outcomes() == first  # reset re-seeds: same draws


def test_blocked_list_and_rate_are_551(fake: FakeGraph, http: httpx.Client) -> None:
    fake.configure(blocked=["666"])
    error = assert_graph_error(
        http.post(SEND, json=message("666"), headers=AUTH), 400, 551, 1545041
    )
    assert error["message"] == "(#551) This person isn't available right now."
    assert http.post(SEND, json=message("667"), headers=AUTH).status_code == 200

    fake.configure(blocked=[], blocked_rate=0.5)
    psids = [str(n) for n in range(40)]
    for psid in psids * 2:  # the same PSIDs get the same answer every time
        blocked = zlib.crc32(psid.encode()) < 0.5 * 2**32
        answer = http.post(SEND, json=message(psid), headers=AUTH)
        assert answer.status_code == (400 if blocked else 200), psid
    counts = stats(http)
    assert counts["by_code"]["551"] + counts["delivered"] == counts["requests"]


def test_checks_run_in_graph_order(fake: FakeGraph, http: httpx.Client) -> None:
    fake.configure(revoked=True, fail_rate=1.0, blocked=["1"])
    assert_graph_error(http.post(SEND, content=b"junk", headers=AUTH), 400, 190, 463)
    fake.configure(revoked=False, rate_limit=1)
    assert_graph_error(http.post(SEND, content=b"junk", headers=AUTH), 400, 100)
    fake.configure(rate_limit=0)
    assert_graph_error(http.post(SEND, json=message("1"), headers=AUTH), 500, 2)
    fake.configure(fail_rate=0.0)
    assert_graph_error(http.post(SEND, json=message("1"), headers=AUTH), 400, 551, 1545041)


def test_rate_limit_is_613_beyond_n_per_second(fake: FakeGraph, http: httpx.Client) -> None:
    fake.configure(rate_limit=5)
    for _attempt in range(5):  # retried only if the burst straddled a wall-clock second
        http.post("/_fake/reset")
        before = int(time.time())
        answers = [http.post(SEND, json=message(str(n)), headers=AUTH) for n in range(8)]
        if int(time.time()) == before:
            break
    else:
        pytest.fail("could not fit 8 requests in one wall-clock second")
    assert [a.status_code for a in answers] == [200] * 5 + [400] * 3
    error = assert_graph_error(answers[-1], 400, 613)
    assert error["message"] == "(#613) Calls to this api have exceeded the rate limit."
    counts = stats(http)
    assert counts["delivered"] == 5
    assert counts["max_per_second"] == {"me": 8}
    assert counts["per_second"] == {"me": {str(before): 8}}


# ---- stats, hooks ----


def test_stats_count_deliveries_duplicates_and_codes(fake: FakeGraph, http: httpx.Client) -> None:
    for psid in ("a", "b", "a", "a"):
        assert http.post(SEND, json=message(psid), headers=AUTH).status_code == 200
    http.post("/v21.0/PAGE/messages", json=message("a"), headers=AUTH)  # another page
    http.post(SEND, json=message("c"))  # no token: not delivered
    fake.config.fail_rate = 1.0  # the config is live, fields may be set directly
    http.post(SEND, json=message("c"), headers=AUTH)

    counts = stats(http)
    assert counts["requests"] == 7
    assert counts["delivered"] == 5
    assert counts["unique"] == 3
    assert counts["duplicates"] == 2
    assert counts["duplicate_ids"] == ["a"]
    assert counts["by_code"] == {"2": 1, "190": 1, "200": 5}
    assert sum(counts["max_per_second"].values()) >= 2
    assert sum(sum(s.values()) for s in counts["per_second"].values()) == 7
    assert http.get("/_fake/delivered").json() == {"me": {"a": 3, "b": 1}, "PAGE": {"a": 1}}

    reset = http.post("/_fake/reset").json()
    assert (reset["requests"], reset["delivered"], reset["per_second"]) == (0, 0, {})
    assert http.get("/_fake/delivered").json() == {}


def test_config_hook_updates_live_config(fake: FakeGraph, http: httpx.Client) -> None:
    answer = http.post("/_fake/config", json={"fail_rate": 1, "tokens": {"secret-tok": "P"}})
    assert answer.status_code == 200
    shown = answer.json()
    assert set(shown) == set(msgspec.structs.asdict(FakeGraphConfig()))
    assert shown["fail_rate"] == 1.0
    assert "secret-tok" not in answer.text  # tokens are never shown
    assert fake.config.fail_rate == 1.0
    assert fake.config.tokens == {"secret-tok": "P"}
    assert (
        http.post(SEND, json=message(), headers={"Authorization": "Bearer secret-tok"}).status_code
        == 500
    )
    assert http.get("/_fake/config").json() == shown


@pytest.mark.parametrize("patch", [{"fail_rate": 2}, {"nope": 1}, {"latency_ms": "x"}, [1]])
def test_config_hook_rejects_bad_fields(fake: FakeGraph, http: httpx.Client, patch: Any) -> None:
    assert_graph_error(http.post("/_fake/config", json=patch), 400, 100)
    assert fake.config == FakeGraphConfig()


def test_unknown_routes_are_404_in_graph_shape(fake: FakeGraph, http: httpx.Client) -> None:
    for answer in (
        http.get("/v21.0/me/messages"),
        http.post("/v21.0/me/feed", json={}, headers=AUTH),
        http.get("/_fake/nope"),
        http.get("/"),
    ):
        assert_graph_error(answer, 404, 803)
    assert stats(http)["requests"] == 0


# ---- HTTP framing over raw sockets ----


def request(psid: str, extra_headers: bytes = b"", version: bytes = b"1.1") -> bytes:
    body = json.dumps(message(psid)).encode()
    return (
        b"POST %b HTTP/%b\r\nHost: fake\r\nAuthorization: Bearer t\r\n"
        b"%bContent-Length: %d\r\n\r\n%b" % (SEND.encode(), version, extra_headers, len(body), body)
    )


class Reader:
    """Parses HTTP responses off a raw socket; `eof` says whether the server closed it."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.parser = httptools.HttpResponseParser(self)
        self.done: list[tuple[int, dict[bytes, bytes], bytes]] = []
        self._headers: dict[bytes, bytes] = {}
        self._body = b""
        self.eof = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.lower()] = value

    def on_body(self, body: bytes) -> None:
        self._body += body

    def on_message_complete(self) -> None:
        self.done.append((self.parser.get_status_code(), self._headers, self._body))
        self._headers, self._body = {}, b""

    def read(self, count: int) -> list[tuple[int, dict[bytes, bytes], bytes]]:
        """Block (socket timeout) until `count` responses have arrived."""
        while len(self.done) < count:
            data = self.sock.recv(65536)
            if not data:
                self.eof = True
                break
            self.parser.feed_data(data)
        taken, self.done = self.done[:count], self.done[count:]
        return taken

    def closed(self) -> bool:
        if not self.eof:
            self.eof = self.sock.recv(65536) == b""
        return self.eof


@pytest.fixture
def raw(server: ServerThread, fake: FakeGraph) -> Iterator[tuple[socket.socket, Reader]]:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    try:
        yield sock, Reader(sock)
    finally:
        sock.close()


def psid_of(response: tuple[int, dict[bytes, bytes], bytes]) -> str:
    status, _headers, body = response
    assert status == 200, body
    psid: str = json.loads(body)["recipient_id"]
    return psid


def test_two_pipelined_requests_in_one_send(raw: tuple[socket.socket, Reader]) -> None:
    sock, reader = raw
    sock.sendall(request("1") + request("2"))
    assert [psid_of(r) for r in reader.read(2)] == ["1", "2"]


def test_pipelined_answers_keep_order_under_latency(
    fake: FakeGraph, raw: tuple[socket.socket, Reader]
) -> None:
    fake.configure(latency_ms=30)
    sock, reader = raw
    sock.sendall(request("1") + request("2") + request("3"))
    assert [psid_of(r) for r in reader.read(3)] == ["1", "2", "3"]


def test_request_split_over_sends(raw: tuple[socket.socket, Reader], http: httpx.Client) -> None:
    sock, reader = raw
    whole = request("42")
    cut_in_headers, cut_in_body = 20, len(whole) - 10
    sock.sendall(whole[:cut_in_headers])
    sock.sendall(whole[cut_in_headers:cut_in_body])
    sock.sendall(whole[cut_in_body:] + request("43")[:30])
    assert psid_of(reader.read(1)[0]) == "42"
    sock.sendall(request("43")[30:])
    assert psid_of(reader.read(1)[0]) == "43"
    assert stats(http)["delivered"] == 2


def test_connection_close_is_honoured(raw: tuple[socket.socket, Reader]) -> None:
    sock, reader = raw
    sock.sendall(request("1", b"Connection: close\r\n") + request("2"))
    [answer] = reader.read(2)  # the second request is never answered
    assert answer[1][b"connection"] == b"close"
    assert reader.closed()


def test_http10_keep_alive_and_close(
    raw: tuple[socket.socket, Reader], server: ServerThread
) -> None:
    sock, reader = raw
    sock.sendall(request("1", b"Connection: keep-alive\r\n", version=b"1.0"))
    [answer] = reader.read(1)
    assert answer[1][b"connection"] == b"keep-alive"
    sock.sendall(request("2", version=b"1.0"))
    [answer] = reader.read(1)
    assert psid_of(answer) == "2"
    assert answer[1][b"connection"] == b"close"
    assert reader.closed()


def test_expect_100_continue(raw: tuple[socket.socket, Reader]) -> None:
    sock, _reader = raw
    whole = request("9", b"Expect: 100-continue\r\n")
    head, body = whole.split(b"\r\n\r\n", 1)
    sock.sendall(head + b"\r\n\r\n")
    assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
    sock.sendall(body)
    assert psid_of(Reader(sock).read(1)[0]) == "9"


def test_malformed_request_is_400_and_closed(raw: tuple[socket.socket, Reader]) -> None:
    sock, reader = raw
    sock.sendall(b"BLAH\x00 / HTTP/1.1\r\n\r\n")
    [(status, headers, body)] = reader.read(1)
    assert status == 400
    assert json.loads(body)["error"]["code"] == 100
    assert headers[b"connection"] == b"close"
    assert reader.closed()


def test_too_large_body_is_refused(raw: tuple[socket.socket, Reader]) -> None:
    sock, reader = raw
    size = 2 * 1024 * 1024
    sock.sendall(b"POST %b HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % (SEND.encode(), size))
    sock.sendall(b" " * size)
    [(status, _headers, _body)] = reader.read(1)
    assert status == 413
    assert reader.closed()


def test_clients_that_disconnect(server: ServerThread, fake: FakeGraph, http: httpx.Client) -> None:
    fake.configure(latency_ms=50)
    for data in (request("1"), request("2")[:25]):  # a whole request, half a request
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        sock.sendall(data)
        sock.close()
    deadline = time.monotonic() + 5
    while stats(http)["requests"] < 1:
        assert time.monotonic() < deadline, "the abandoned request was never counted"
    fake.configure(latency_ms=0)
    assert http.post(SEND, json=message("3"), headers=AUTH).status_code == 200
    assert stats(http)["delivered"] == 2  # accepted before the client left: a real duplicate risk


def test_latency_does_not_block_the_loop(server: ServerThread, fake: FakeGraph) -> None:
    fake.configure(latency_ms=200)
    socks = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(20)]
    try:
        started = time.monotonic()
        for n, sock in enumerate(socks):
            sock.sendall(request(str(n)))
        answers = [Reader(sock).read(1)[0] for sock in socks]
        elapsed = time.monotonic() - started
    finally:
        for sock in socks:
            sock.close()
    assert [psid_of(a) for a in answers] == [str(n) for n in range(20)]
    assert 0.19 <= elapsed < 2.0  # 20 x 200 ms would be 4 s if the delays were serial


# ---- the command line ----


def test_cli_help_and_bad_tokens(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    assert "--latency-ms" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exited:
        main(["--tokens", "P1=secret-one,garbage-secret"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "secret-one" not in err and "garbage-secret" not in err  # no token in the error
    assert "item 2" in err  # but where the malformed item is


def test_python_m_runs_until_sigterm() -> None:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "services.fakegraph",
            "--port",
            "0",
            "--fail-rate",
            "1",
            "--tokens",
            "P1=cli-secret",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)
            assert selector.select(timeout=15), "no start line"
            line = process.stdout.readline().decode()
        started = json.loads(line)
        assert started["event"] == "fakegraph.listening"
        assert "cli-secret" not in line
        url = started["url"]
        with httpx.Client(base_url=url, timeout=5) as client:
            answer = client.post(
                SEND, json=message(), headers={"Authorization": "Bearer cli-secret"}
            )
            assert_graph_error(answer, 500, 2)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
        rest = process.stdout.read().decode()
        assert json.loads(rest)["event"] == "fakegraph.stopped"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


# ---- page health knobs: an outage, a restricted page, the 24 h window ----


def test_outage_answers_503_code_2_until_its_end(fake: FakeGraph, http: httpx.Client) -> None:
    fake.configure(outage_until=time.time() + 60, revoked=True)
    error = assert_graph_error(http.post(SEND, json=message(), headers=AUTH), 503, 2)
    assert error["is_transient"] is True
    assert error["message"] == "(#2) Service temporarily unavailable"
    fake.configure(outage_until=time.time() - 1, revoked=False)
    assert http.post(SEND, json=message(), headers=AUTH).status_code == 200
    counts = stats(http)
    assert (counts["requests"], counts["delivered"]) == (2, 1)
    assert counts["by_code"] == {"2": 1, "200": 1}


def test_restricted_page_answers_10_1893063(fake: FakeGraph, http: httpx.Client) -> None:
    fake.configure(restricted_pages=["me"])
    error = assert_graph_error(http.post(SEND, json=message("7"), headers=AUTH), 400, 10, 1893063)
    assert error["message"] == "(#10) You are temporarily restricted from sending messages"
    assert http.post("/v21.0/42/messages", json=message("7"), headers=AUTH).status_code == 200
    assert http.get("/_fake/refused").json() == {"10/1893063": {"7": 1}}
    assert stats(http)["delivered"] == 1


def test_window_enforced_from_the_last_message_table(fake: FakeGraph, http: httpx.Client) -> None:
    now = time.time()
    fed = http.post("/_fake/window", json={"1": now - 3600, "2": now - 25 * 3600})
    assert fed.json() == {"people": 2}
    fake.configure(enforce_window=True)
    assert http.post(SEND, json=message("1", messaging_type="UPDATE"), headers=AUTH).is_success
    for psid in ("2", "3"):  # 25 h ago, and never
        error = assert_graph_error(
            http.post(SEND, json=message(psid, messaging_type="RESPONSE"), headers=AUTH),
            400,
            10,
            2018278,
        )
        assert error["message"].startswith("(#10) This message is sent outside of allowed window.")
    tagged = message("2", messaging_type="MESSAGE_TAG", tag="HUMAN_AGENT")
    assert http.post(SEND, json=tagged, headers=AUTH).is_success  # tags are not checked here
    assert http.get("/_fake/refused").json() == {"10/2018278": {"2": 1, "3": 1}}
    assert http.post("/_fake/window", json={"1": "yesterday"}).status_code == 400


# ---- attachments: the upload API, sends by id or URL, the audio/video limit ----

UPLOAD = "/v21.0/me/message_attachments"


def media(kind: str, **payload: Any) -> dict[str, Any]:
    return {"attachment": {"type": kind, "payload": payload}}


def test_upload_once_then_send_by_id(fake: FakeGraph, http: httpx.Client) -> None:
    fake.configure(tokens={"tok-a": "PAGE_A", "tok-b": "PAGE_B"})
    body = {"message": media("image", url="https://cdn.example/cat.jpg", is_reusable=True)}
    answer = http.post(UPLOAD, json=body, headers={"Authorization": "Bearer tok-a"})
    assert answer.status_code == 200
    assert set(answer.json()) == {"attachment_id"}
    attachment_id = answer.json()["attachment_id"]
    assert attachment_id.isdigit()
    by_id = media("image", attachment_id=attachment_id)
    a, b = {"Authorization": "Bearer tok-a"}, {"Authorization": "Bearer tok-b"}
    assert http.post(SEND, json={"recipient": {"id": "1"}, "message": by_id}, headers=a).is_success
    # Another page's id, and an id never uploaded: code 100, nothing delivered.
    assert_graph_error(
        http.post(SEND, json={"recipient": {"id": "2"}, "message": by_id}, headers=b), 400, 100
    )
    unknown = media("image", attachment_id="42")
    assert_graph_error(
        http.post(SEND, json={"recipient": {"id": "3"}, "message": unknown}, headers=a), 400, 100
    )
    by_url = media("image", url="https://cdn.example/cat.jpg")
    assert http.post(SEND, json={"recipient": {"id": "4"}, "message": by_url}, headers=a).is_success
    seen = http.get("/_fake/attachments").json()
    assert seen["uploads"] == 1 and seen["uploaded_ids"] == {attachment_id: "PAGE_A"}
    assert seen["sends_by_attachment_id"] == {attachment_id: 1}
    assert seen["url_fetches"] == 1  # Meta fetches a URL per message
    assert http.get("/_fake/delivered").json() == {"PAGE_A": {"1": 1, "4": 1}}


def test_upload_failures_as_meta_answers(fake: FakeGraph, http: httpx.Client) -> None:
    body = {"message": media("video", url="https://cdn.example/clip.mp4", is_reusable=True)}
    assert_graph_error(http.post(UPLOAD, json=body), 400, 190)  # no token
    fake.configure(upload_fail="fetch")
    error = assert_graph_error(http.post(UPLOAD, json=body, headers=AUTH), 400, 100, 2018008)
    assert error["message"] == "(#100) Failed to fetch the file from the url"
    fake.configure(upload_fail="transient", upload_fail_times=2)  # one failure already counted
    assert_graph_error(http.post(UPLOAD, json=body, headers=AUTH), 500, 2)
    assert http.post(UPLOAD, json=body, headers=AUTH).status_code == 200
    no_url = {"message": media("video", is_reusable=True)}
    assert_graph_error(http.post(UPLOAD, json=no_url, headers=AUTH), 400, 100)
    seen = http.get("/_fake/attachments").json()
    assert (seen["uploads"], seen["upload_failures"]) == (3, 2)


def test_audio_and_video_beyond_the_media_limit_are_613(
    fake: FakeGraph, http: httpx.Client
) -> None:
    fake.configure(media_rate_limit=3)
    codes = []
    for i in range(8):
        kind = "video" if i % 2 else "audio"
        send = {"recipient": {"id": str(i)}, "message": media(kind, url="https://x.example/a")}
        codes.append(http.post(SEND, json=send, headers=AUTH).status_code)
    image = {"recipient": {"id": "99"}, "message": media("image", url="https://x.example/a")}
    assert http.post(SEND, json=image, headers=AUTH).is_success  # images are not limited
    times = http.get("/_fake/attachments").json()["media_times"]["me"]
    assert len(times) == 8
    per_second: dict[int, int] = {}
    for t in times:
        per_second[int(t)] = per_second.get(int(t), 0) + 1
    # The first 3 of each wall-clock second pass; the rest answer 613.
    accepted = sum(min(3, n) for n in per_second.values())
    assert codes.count(200) == accepted and codes.count(400) == 8 - accepted
    assert stats(http)["by_code"].get("613") == 8 - accepted


# ---- tags as they are now, rich bodies kept as sent ----


@pytest.mark.parametrize(
    "tag", ["ACCOUNT_UPDATE", "CONFIRMED_EVENT_UPDATE", "POST_PURCHASE_UPDATE"]
)
def test_retired_tags_are_100_subcode_1893061(
    fake: FakeGraph, http: httpx.Client, tag: str
) -> None:
    body = message("7", messaging_type="MESSAGE_TAG", tag=tag)
    error = assert_graph_error(http.post(SEND, json=body, headers=AUTH), 400, 100, 1893061)
    assert error["message"] == "(#100) Invalid parameter"
    live = message("7", messaging_type="MESSAGE_TAG", tag="HUMAN_AGENT")
    assert http.post(SEND, json=live, headers=AUTH).status_code == 200
    assert stats(http)["delivered"] == 1


def test_rich_bodies_are_accepted_and_kept_as_sent(fake: FakeGraph, http: httpx.Client) -> None:
    generic = {
        "recipient": {"id": "8"},
        "messaging_type": "UPDATE",
        "message": {
            "attachment": {
                "type": "template",
                "payload": {"template_type": "generic", "elements": [{"title": "Hi"}]},
            },
            "quick_replies": [{"content_type": "text", "title": "Yes", "payload": "Y"}],
        },
    }
    utility = {
        "recipient": {"id": "9"},
        "messaging_type": "UTILITY",
        "message": {"template": {"name": "order_update", "language": {"code": "en"}}},
    }
    for body in (generic, utility):
        assert http.post(SEND, json=body, headers=AUTH).status_code == 200
    assert http.get("/_fake/bodies").json() == {"8": generic, "9": utility}
    assert http.get("/_fake/texts").json() == {}
