"""A small HTTP/1.1 server on httptools' parser that calls the V2 handlers directly.

Why not uvicorn: for a model that runs in microseconds, the ASGI layer (message dicts, a cycle object and two
transport writes per response) costs more than the model. This server parses with httptools (the same parser
uvicorn uses), answers each request with one write, keeps connections alive, answers pipelined requests in
order, honours `Expect: 100-continue`, bounds bodies by `--http-max-input-size`, and closes idle connections.
`HttpFrontend` stays a plain ASGI application too, for anyone who wants to mount it elsewhere.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import socket
import time
from email.utils import formatdate
from http import HTTPStatus
from typing import Any

import httptools

from .app import HttpFrontend
from .messages import QUERY_HEADER, Reply, error_reply

log = logging.getLogger("inferd.http")

KEEP_ALIVE_TIMEOUT = 75.0
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}
# Headers a request may carry before the rest are ignored (a bound on what one request can make us keep).
MAX_HEADERS = 100


class _Clock:
    """The Date header, formatted once a second."""

    second = 0
    header = b""

    @classmethod
    def date(cls) -> bytes:
        now = int(time.time())
        if now != cls.second:
            cls.second = now
            cls.header = b"date: " + formatdate(now, usegmt=True).encode() + b"\r\n"
        return cls.header


class _Request:
    __slots__ = ("body", "headers", "keep_alive", "method", "path", "too_large")

    def __init__(self, method: str, path: str, headers: dict[bytes, bytes], body: bytes, keep_alive: bool,
                 too_large: bool) -> None:
        self.method = method
        self.path = path
        self.headers = headers
        self.body = body
        self.keep_alive = keep_alive
        self.too_large = too_large


class _Connection(asyncio.Protocol):
    """One client connection: parses requests and answers them one at a time, in order."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.frontend = server.frontend
        self.limit = server.max_input_size
        self.loop = server.loop
        self.arrivals = server.frontend.server.arrivals
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.headers: dict[bytes, bytes] = {}
        self.body: list[bytes] = []
        self.body_size = 0
        self.too_large = False
        self.busy = False
        self.waiting: collections.deque[_Request] = collections.deque()
        self.idle_timer: asyncio.TimerHandle | None = None
        self.task: asyncio.Task[None] | None = None
        self.task_started = False

    # ---- asyncio.Protocol ----

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        self.server.connections.add(self)
        self._arm_idle_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.transport = None
        if self.idle_timer is not None:
            self.idle_timer.cancel()
        if self.task is not None:
            # The client went away: a request still queued for its model leaves the queue without running.
            if not self.task_started:
                self.arrivals.started(self.loop)
            self.task.cancel()
        self.waiting.clear()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(400, "protocol upgrades are not supported")
        except httptools.HttpParserError as exc:
            self._fail(400, f"malformed HTTP request: {exc}")

    # ---- httptools callbacks ----

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = {}
        self.body = []
        self.body_size = 0
        self.too_large = False
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        # Every header is kept (by lower-case name): pipeline stages read what they need (authorization, host,
        # traceparent, ...) through the request's context.
        headers = self.headers
        if len(headers) < MAX_HEADERS:
            headers[name.lower()] = value

    def on_headers_complete(self) -> None:
        declared = self.headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            self.too_large = True
        elif self.headers.get(b"expect", b"").lower() == b"100-continue" and self.transport is not None:
            self.transport.write(_CONTINUE)

    def on_body(self, body: bytes) -> None:
        if self.too_large:
            return
        self.body_size += len(body)
        if self.body_size > self.limit:
            self.too_large = True
            self.body = []
        else:
            self.body.append(body)

    def on_message_complete(self) -> None:
        url = self.url
        query = url.find(b"?")
        path = (url if query < 0 else url[:query]).decode("latin-1")
        if query >= 0:
            self.headers[QUERY_HEADER] = url[query + 1:]
        if "%" in path:
            from urllib.parse import unquote

            path = unquote(path)
        body = self.body[0] if len(self.body) == 1 else b"".join(self.body)
        request = _Request(self.parser.get_method().decode("latin-1"), path, self.headers, body,
                           self.parser.should_keep_alive(), self.too_large)
        if self.busy:
            self.waiting.append(request)
        else:
            self._start(request)

    # ---- answering ----

    def _start(self, request: _Request) -> None:
        self.busy = True
        if request.too_large:
            self._answer(request, error_reply(413, f"request body exceeds the limit of {self.limit} bytes "
                                                   "(--http-max-input-size)"))
            return
        self.arrivals.arrived(self.loop)
        self.task_started = False
        self.task = self.loop.create_task(self._run(request))

    async def _run(self, request: _Request) -> None:
        self.task_started = True
        self.arrivals.started(self.loop)
        reply = await self.frontend.handle(request.method, request.path, request.headers, request.body)
        self.task = None
        self._answer(request, reply)

    def _answer(self, request: _Request, reply: Reply) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            self.busy = False
            return
        status, payload, headers = reply
        keep_alive = request.keep_alive and not request.too_large
        head = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Unknown")), _Clock.date()]
        for name, value in headers:
            head.append(b"%s: %s\r\n" % (name, value))
        head.append(b"content-length: %d\r\n" % len(payload))
        if not keep_alive:
            head.append(b"connection: close\r\n")
        head.append(b"\r\n")
        if request.method == "HEAD":
            transport.write(b"".join(head))
        elif len(payload) < 65536:
            head.append(payload)
            transport.write(b"".join(head))
        else:
            transport.write(b"".join(head))
            transport.write(payload)
        if not keep_alive:
            transport.close()
            self.busy = False
            return
        if self.waiting:
            self._start(self.waiting.popleft())
        else:
            self.busy = False
            self._arm_idle_timer()

    def _fail(self, status: int, message: str) -> None:
        if self.transport is None:
            return
        _, payload, headers = error_reply(status, message)
        self._answer(_Request("POST", "", {}, b"", False, False), (status, payload, headers))

    def _arm_idle_timer(self) -> None:
        self.idle_timer = self.loop.call_later(self.server.keep_alive_timeout, self._close_if_idle)

    def _close_if_idle(self) -> None:
        if not self.busy and self.transport is not None:
            self.transport.close()

    def close_if_idle(self) -> bool:
        if self.busy:
            return False
        if self.transport is not None:
            self.transport.close()
        return True


class HttpServer:
    """Listens on host:port and serves `frontend` until `stop`."""

    def __init__(self, frontend: HttpFrontend, host: str, port: int, *,
                 keep_alive_timeout: float = KEEP_ALIVE_TIMEOUT) -> None:
        self.frontend = frontend
        self.host = host
        self.port = port
        self.max_input_size = frontend.max_input_size
        self.keep_alive_timeout = keep_alive_timeout
        self.connections: set[_Connection] = set()
        self._server: asyncio.base_events.Server | None = None
        self.loop: Any = None

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._server = await self.loop.create_server(lambda: _Connection(self), self.host, self.port,
                                                     reuse_address=True, backlog=4096)
        if self.port == 0:
            self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self, timeout: float) -> None:
        """Stop accepting; let requests in flight finish (up to `timeout` seconds); close every connection."""
        if self._server is not None:
            self._server.close()
        deadline = time.monotonic() + timeout
        while True:
            busy = [c for c in list(self.connections) if not c.close_if_idle()]
            if not busy or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.02)
        for connection in list(self.connections):
            if connection.transport is not None:
                connection.transport.close()
