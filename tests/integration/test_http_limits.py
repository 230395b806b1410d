"""What one HTTP client can make the server hold is bounded (issue 17, findings 3 and 4).

Read timeouts for headers and bodies (408), URL and header limits (414 / 431), an immediate 413 / 417 for a
declared body over the limit, a cap on connections, read backpressure while pipelined requests wait and while the
client does not read its answers, and pipelined answers written in order before the error for a later request.
Each case talks raw HTTP/1.1 over a socket to an in-process HttpServer on port 0 (or a real `inferd serve` for the
flags), and the server still answers /v2/health/ready afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

import inferd
from inferd.frontends.http import HttpFrontend, HttpServer
from inferd.frontends.http.messages import HttpRequest, Reply, json_reply
from inferd.frontends.http.routes import SERVE_ROUTES, Route
from inferd.frontends.http.server import HttpLimits, _Connection
from serving import ServerProcess, start_server

HOST = "127.0.0.1"
LIMIT = 1024 * 1024  # --http-max-input-size of the in-process servers
READY = b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n"


class _Gate:
    event: asyncio.Event | None = None


async def _slow(frontend: Any, request: HttpRequest, params: Any) -> Reply:
    """Answers once the test opens the gate (a slow request at the head of a connection's pipeline)."""
    assert _Gate.event is not None
    await _Gate.event.wait()
    return json_reply(200, {"slow": len(request.body)})


async def _big(frontend: Any, request: HttpRequest, params: Any) -> Reply:
    return json_reply(200, {"big": "x" * (256 * 1024)})


async def _echo(frontend: Any, request: HttpRequest, params: Any) -> Reply:
    return json_reply(200, {"size": len(request.body)})


ROUTES = [*SERVE_ROUTES, Route("POST", "/test/slow", _slow, "v2"), Route("GET", "/test/big", _big, "v2"),
          Route("POST", "/test/echo", _echo, "v2")]


@pytest.fixture(scope="module")
def sdk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[inferd.Server]:
    repo = tmp_path_factory.mktemp("limits") / "models"
    repo.mkdir()
    with inferd.Server(model_repository=repo) as server:
        yield server


class Harness:
    def __init__(self, http: HttpServer) -> None:
        self.http = http

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(HOST, self.http.port)

    def only_connection(self) -> _Connection:
        (connection,) = list(self.http.connections)
        return connection

    async def assert_ready(self) -> None:
        reader, writer = await self.connect()
        writer.write(READY)
        status, _, _ = await read_response(reader)
        assert status == 200
        writer.close()


@contextlib.asynccontextmanager
async def serving(sdk: inferd.Server, **limits: Any) -> AsyncIterator[Harness]:
    """An HttpServer on port 0 with these HttpLimits, on the test's own event loop."""
    _Gate.event = asyncio.Event()
    http = HttpServer(HttpFrontend(sdk, max_input_size=LIMIT, routes=ROUTES), HOST, 0, limits=HttpLimits(**limits))
    await http.start()
    try:
        yield Harness(http)
    finally:
        _Gate.event.set()
        await http.stop(5)


async def read_response(reader: asyncio.StreamReader, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """One response: status, headers, body."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    if status == 100:
        return status, {}, b""
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", "0"))), timeout)
    return status, headers, body


async def status_then_eof(reader: asyncio.StreamReader, timeout: float = 10.0) -> int:
    status, headers, _ = await read_response(reader, timeout)
    assert headers.get("connection") == "close"
    assert await asyncio.wait_for(reader.read(), timeout) == b""
    return status


def post(path: str, body: bytes, *extra: str) -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n" + "".join(f"{h}\r\n" for h in extra)
    return head.encode() + b"\r\n" + body


# ---- read timeouts ----

async def test_partial_headers_get_408(sdk: inferd.Server) -> None:
    async with serving(sdk, header_timeout=0.4) as harness:
        reader, writer = await harness.connect()
        writer.write(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n")  # no blank line: the headers never end
        assert await status_then_eof(reader, 5) == 408
        await harness.assert_ready()


async def test_silent_connection_is_closed(sdk: inferd.Server) -> None:
    async with serving(sdk, header_timeout=0.4) as harness:
        reader, _ = await harness.connect()
        status, _, _ = await read_response(reader, 5)
        assert status == 408
        await harness.assert_ready()


async def test_partial_body_gets_408(sdk: inferd.Server) -> None:
    async with serving(sdk, body_timeout=0.4) as harness:
        reader, writer = await harness.connect()
        writer.write(post("/test/echo", b"x" * 100)[:-90])  # 10 of the 100 bytes declared
        assert await status_then_eof(reader, 5) == 408
        await harness.assert_ready()


async def test_timeouts_do_not_touch_a_slow_request_or_the_ones_behind_it(sdk: inferd.Server) -> None:
    async with serving(sdk, header_timeout=0.4, body_timeout=0.4) as harness:
        reader, writer = await harness.connect()
        writer.write(post("/test/slow", b"") + READY)
        await asyncio.sleep(1.2)  # three timeouts' worth while the first request runs
        assert _Gate.event is not None
        _Gate.event.set()
        assert (await read_response(reader))[0] == 200
        assert (await read_response(reader))[0] == 200
        writer.write(READY)  # still open
        assert (await read_response(reader))[0] == 200


# ---- sizes ----

async def test_long_url_gets_414(sdk: inferd.Server) -> None:
    async with serving(sdk) as harness:
        reader, writer = await harness.connect()
        writer.write(b"GET /v2/health/ready?" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        assert await status_then_eof(reader) == 414
        await harness.assert_ready()


async def test_large_header_gets_431(sdk: inferd.Server) -> None:
    async with serving(sdk) as harness:
        reader, writer = await harness.connect()
        writer.write(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n")
        assert await status_then_eof(reader) == 431
        await harness.assert_ready()


async def test_many_headers_get_431(sdk: inferd.Server) -> None:
    async with serving(sdk) as harness:
        reader, writer = await harness.connect()
        writer.write(b"GET /v2/health/ready HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(101)) + b"\r\n")
        assert await status_then_eof(reader) == 431
        await harness.assert_ready()


async def test_endless_header_gets_431_before_it_ends(sdk: inferd.Server) -> None:
    """A header that never ends is refused once the bytes held pass the limit, not when (if) it ends."""
    async with serving(sdk) as harness:
        reader, writer = await harness.connect()
        writer.write(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\nX-Big: ")
        for _ in range(64):
            if reader.at_eof() or writer.is_closing():
                break
            writer.write(b"a" * 4096)
            await asyncio.sleep(0.005)
        assert await status_then_eof(reader) == 431
        await harness.assert_ready()


async def test_declared_length_over_the_limit_gets_413_at_once(sdk: inferd.Server) -> None:
    async with serving(sdk) as harness:
        reader, writer = await harness.connect()
        writer.write(f"POST /test/echo HTTP/1.1\r\nHost: x\r\nContent-Length: {10**12}\r\n\r\n".encode())
        assert await status_then_eof(reader, 5) == 413  # before any of the body was sent
        await harness.assert_ready()


async def test_413_is_read_by_a_client_still_sending(sdk: inferd.Server) -> None:
    async with serving(sdk) as harness:
        reader, writer = await harness.connect()
        writer.write(post("/test/echo", b"x" * (2 * LIMIT)))
        assert await status_then_eof(reader, 5) == 413
        await harness.assert_ready()


async def test_chunked_body_over_the_limit_gets_413(sdk: inferd.Server) -> None:
    async with serving(sdk) as harness:
        reader, writer = await harness.connect()
        writer.write(b"POST /test/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"%x\r\n" % 65536 + b"x" * 65536 + b"\r\n"
        for _ in range(LIMIT // 65536 + 1):
            writer.write(chunk)
        assert await status_then_eof(reader, 5) == 413
        await harness.assert_ready()


async def test_expect_continue_over_the_limit_gets_417_without_100(sdk: inferd.Server) -> None:
    async with serving(sdk) as harness:
        reader, writer = await harness.connect()
        writer.write(f"POST /test/echo HTTP/1.1\r\nHost: x\r\nContent-Length: {LIMIT + 1}\r\n"
                     "Expect: 100-continue\r\n\r\n".encode())
        assert await status_then_eof(reader, 5) == 417  # the first line read is the 417: no 100 Continue came
        await harness.assert_ready()


async def test_expect_continue_behind_a_slow_request_waits_for_its_answer(sdk: inferd.Server) -> None:
    async with serving(sdk) as harness:
        reader, writer = await harness.connect()
        writer.write(post("/test/slow", b"") + b"POST /test/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
                     b"Expect: 100-continue\r\n\r\n")
        await asyncio.sleep(0.2)
        assert _Gate.event is not None
        _Gate.event.set()
        assert (await read_response(reader))[0] == 200  # the slow one's answer, then the interim response
        assert (await read_response(reader))[0] == 100
        writer.write(b"abc")
        status, _, body = await read_response(reader)
        assert (status, json.loads(body)) == (200, {"size": 3})


# ---- pipelining ----

async def test_answers_come_before_the_error_for_garbage_behind_them(sdk: inferd.Server) -> None:
    async with serving(sdk) as harness:
        reader, writer = await harness.connect()
        writer.write(post("/test/echo", b"abc") + READY + b"GARBAGE\r\n\r\n")
        status, _, body = await read_response(reader)
        assert (status, json.loads(body)) == (200, {"size": 3})
        assert (await read_response(reader))[0] == 200
        assert await status_then_eof(reader) == 400
        await harness.assert_ready()


async def test_answers_come_before_the_error_for_a_slow_request(sdk: inferd.Server) -> None:
    async with serving(sdk) as harness:
        reader, writer = await harness.connect()
        writer.write(post("/test/slow", b"") + b"\x00GARBAGE\r\n\r\n")
        await asyncio.sleep(0.2)
        assert _Gate.event is not None
        _Gate.event.set()
        assert (await read_response(reader))[0] == 200
        assert await status_then_eof(reader) == 400


async def test_reading_pauses_while_pipelined_requests_wait(sdk: inferd.Server) -> None:
    async with serving(sdk, max_pipelined=4) as harness:
        reader, writer = await harness.connect()
        writer.write(post("/test/slow", b""))
        for _ in range(40):
            writer.write(READY)
            await writer.drain()
            await asyncio.sleep(0.002)
        await asyncio.sleep(0.2)
        connection = harness.only_connection()
        assert not connection.reading
        assert len(connection.waiting) <= 4 + 1
        assert _Gate.event is not None
        _Gate.event.set()
        for _ in range(41):
            assert (await read_response(reader))[0] == 200
        assert connection.reading


async def test_pipelined_bodies_are_bounded_in_bytes(sdk: inferd.Server) -> None:
    """Bodies pipelined behind a slow request: the server holds about one limit's worth, not all of them."""
    async with serving(sdk, max_pipelined_bytes=LIMIT) as harness:
        reader, writer = await harness.connect()
        body = b"x" * (LIMIT // 2)
        writer.write(post("/test/slow", b""))

        async def send() -> None:
            for _ in range(40):  # 20 MiB in all
                writer.write(post("/test/echo", body))
                await writer.drain()

        sender = asyncio.create_task(send())
        await asyncio.sleep(0.5)
        connection = harness.only_connection()
        assert not connection.reading
        assert connection.queued_bytes <= LIMIT + len(body)
        assert not sender.done()  # the rest waits in the socket buffers, on the client's side
        assert _Gate.event is not None
        _Gate.event.set()
        assert (await read_response(reader))[0] == 200
        for _ in range(40):
            status, _, answer = await read_response(reader)
            assert (status, json.loads(answer)) == (200, {"size": len(body)})
        await sender
        await harness.assert_ready()


async def test_a_client_that_does_not_read_stops_the_reading(sdk: inferd.Server) -> None:
    """60 answers of 256 KiB asked for and none read: the server holds about one answer beyond the socket's
    buffers, not 15 MiB."""
    async with serving(sdk) as harness:
        reader, writer = await harness.connect()
        writer.write(b"GET /test/big HTTP/1.1\r\nHost: x\r\n\r\n" * 60)
        connection = harness.only_connection()
        for _ in range(200):
            if connection.write_paused:
                break
            await asyncio.sleep(0.01)
        assert connection.write_paused and not connection.reading
        assert connection.transport is not None
        assert connection.transport.get_write_buffer_size() < 2 * 300 * 1024
        for _ in range(60):
            status, _, body = await read_response(reader)
            assert status == 200 and len(body) > 256 * 1024
        assert not connection.write_paused and connection.reading
        await harness.assert_ready()


# ---- connections ----

async def test_connection_cap_closes_idle_ones_for_new_clients(sdk: inferd.Server) -> None:
    async with serving(sdk, max_connections=4) as harness:
        stalled = [await harness.connect() for _ in range(4)]
        for _, writer in stalled:
            writer.write(b"GET /v2/health/ready HTTP/1.1\r\n")  # slowloris
        await asyncio.sleep(0.1)
        await harness.assert_ready()  # the oldest stalled one made room
        assert await asyncio.wait_for(stalled[0][0].read(), 5) == b""
        assert len(harness.http.connections) <= 4


async def test_connection_cap_answers_503_when_all_are_busy(sdk: inferd.Server) -> None:
    async with serving(sdk, max_connections=4) as harness:
        busy = [await harness.connect() for _ in range(4)]
        for _, writer in busy:
            writer.write(post("/test/slow", b""))
        await asyncio.sleep(0.2)
        reader, writer = await harness.connect()
        writer.write(READY)
        assert (await read_response(reader))[0] == 503
        assert _Gate.event is not None
        _Gate.event.set()
        for busy_reader, _ in busy:
            assert (await read_response(busy_reader))[0] == 200
        await harness.assert_ready()


# ---- inferd serve's flags ----

@pytest.fixture(scope="module")
def limited_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("limited")
    (root / "models").mkdir()
    process = start_server(root / "models", root / "inferd.log", "--http-header-timeout-secs", "0.5",
                           "--http-body-timeout-secs", "0.5", "--http-max-connections", "3", "--allow-grpc=false",
                           "--allow-metrics=false")
    yield process
    process.stop()


async def test_serve_flags(limited_server: ServerProcess) -> None:
    port = limited_server.http_port

    async def exchange(data: bytes) -> int:
        reader, writer = await asyncio.open_connection(HOST, port)
        writer.write(data)
        try:
            return (await read_response(reader, 5))[0]
        finally:
            writer.close()

    assert await exchange(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n") == 408  # --http-header-timeout-secs
    assert await exchange(post("/v2/repository/index", b"{}")[:-1]) == 408  # --http-body-timeout-secs
    held = [await asyncio.open_connection(HOST, port) for _ in range(5)]  # past --http-max-connections=3
    await asyncio.sleep(0.1)
    assert await exchange(READY) == 200
    for _, writer in held:
        writer.close()
    assert await exchange(READY) == 200
