"""A small HTTP/1.1 server on httptools' parser that calls the V2 handlers directly.

Why not uvicorn: for a model that runs in microseconds, the ASGI layer (message dicts, a cycle object and two
transport writes per response) costs more than the model. This server parses with httptools (the same parser
uvicorn uses), answers each request with one write, keeps connections alive, answers pipelined requests in
order, honours `Expect: 100-continue`, bounds bodies by `--http-max-input-size`, and closes idle connections.
`HttpFrontend` stays a plain ASGI application too, for anyone who wants to mount it elsewhere.

Everything a client can make it hold is bounded (`HttpLimits`): the time to send a request's headers and its body
(408), the size of the request line and headers (414 / 431), the body (413 as soon as a declared or read length is
over the limit; 417 instead of `100 Continue`), the connections open at once (past the cap the oldest connection
that has no request in progress is closed for the new one, else the new one is answered 503), and what one
connection may queue: reading pauses while too many pipelined requests wait, and while the client does not read
its answers (the transport's write buffer is over its high-water mark). A request the server refuses is answered
after every earlier request on the connection, and the connection then closes.

With `tls` the port serves HTTPS only (see `frontends.tls`). The TLS handshake is bounded by the header timeout
(a client that connects and never completes it is dropped), and since a TLS transport cannot half-close, a refused
connection is closed (with TLS's close_notify) right after its answer instead of lingering.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import socket
import time
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from typing import Any

import httptools

from ..eager import start_eagerly
from ..tls import TlsSettings
from .app import HttpFrontend
from .messages import PEER_HEADER, QUERY_HEADER, Reply, error_reply

log = logging.getLogger("inferd.http")

KEEP_ALIVE_TIMEOUT = 75.0
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}
# Headers a request may carry (more: 431).
MAX_HEADERS = 100
# After refusing a request the server stops answering, sends its answer and half-closes; what the client still
# sends is read and dropped for this long before the close, so that the client reads the answer instead of a reset.
LINGER_S = 2.0

# Where the current request stands, for the timeouts.
_IDLE, _HEAD, _BODY = 0, 1, 2


def default_max_connections() -> int:
    """10,000, or half the process's open-files limit where that is lower (the rest is for models, gRPC, ...)."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):
        return 10_000
    if soft == resource.RLIM_INFINITY:
        return 10_000
    return max(16, min(10_000, soft // 2))


@dataclass(frozen=True)
class HttpLimits:
    """What one client may make the HTTP server hold.

    header_timeout: seconds from a request's first byte (a new connection's accept) to the end of its headers.
    body_timeout: seconds from the end of a request's headers (or the `100 Continue`) to the end of its body.
    keep_alive_timeout: seconds an idle connection stays open between requests.
    max_url_bytes / max_header_bytes / max_headers: the request target (414), the headers' total size counted as
    `name: value\\r\\n` and their count (431).
    max_connections: connections open at once (0 or less: `default_max_connections()`).
    max_pipelined / max_pipelined_bytes: requests (and their bodies' bytes) read ahead and waiting on one
    connection before reading pauses.
    """

    header_timeout: float = 30.0
    body_timeout: float = 60.0
    keep_alive_timeout: float = KEEP_ALIVE_TIMEOUT
    max_url_bytes: int = 8 * 1024
    max_header_bytes: int = 16 * 1024
    max_headers: int = MAX_HEADERS
    max_connections: int = 0
    max_pipelined: int = 16
    max_pipelined_bytes: int = 4 * 1024 * 1024


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


class _Stop(Exception):
    """Raised from a parser callback once the request is refused: the parser stops where it is."""


class _Request:
    __slots__ = ("body", "headers", "keep_alive", "method", "path", "reply")

    def __init__(self, method: str, path: str, headers: dict[bytes, bytes], body: bytes, keep_alive: bool,
                 reply: Reply | None = None) -> None:
        self.method = method
        self.path = path
        self.headers = headers
        self.body = body
        self.keep_alive = keep_alive
        self.reply = reply  # set: the answer is this (a refusal), the handler does not run


class _Connection(asyncio.Protocol):
    """One client connection: parses requests and answers them one at a time, in order."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.frontend = server.frontend
        self.limits = server.limits
        self.limit = server.max_input_size
        self.loop = server.loop
        self.arrivals = server.frontend.server.arrivals
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.headers: dict[bytes, bytes] = {}
        self.header_count = 0
        self.header_bytes = 0
        self.head_bytes = 0
        self.began_here = False
        self.body: list[bytes] = []
        self.body_size = 0
        self.busy = False  # a request is running or answered, or held until the client reads
        self.held = False  # the next request waits for the client to read (write buffer over its high-water mark)
        self.waiting: collections.deque[_Request] = collections.deque()
        self.queued_bytes = 0
        self.reading = True
        self.write_paused = False
        self.stopped = False  # a request was refused: nothing more is read
        self.pending_continue = False
        self.phase = _HEAD  # a new connection has header_timeout to send its first request's headers
        self.since = server.now
        self.task: asyncio.Task[None] | None = None
        self.peer = b""  # the client's "host:port", kept among each request's headers when the gateway audits

    # ---- asyncio.Protocol ----

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        connections = self.server.connections
        if len(connections) >= self.server.max_connections and not self.server.evict():
            _, payload, headers = error_reply(503, "too many connections; try again later")
            self.stopped = True
            self._write_head(transport, 503, headers, payload, False, b"")  # type: ignore[arg-type]
            transport.close()
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        if self.frontend.gateway is not None:
            peer = transport.get_extra_info("peername")
            if isinstance(peer, tuple) and len(peer) >= 2:
                host = f"[{peer[0]}]" if ":" in str(peer[0]) else str(peer[0])
                self.peer = f"{host}:{peer[1]}".encode()
        connections[self] = None

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.pop(self, None)
        self.transport = None
        if self.task is not None:
            # The client went away: a request still queued for its model leaves the queue without running.
            self.task.cancel()
        self.waiting.clear()
        self.queued_bytes = 0

    def pause_writing(self) -> None:
        # The client does not read its answers: read no more requests, and run no more until it does.
        self.write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.held:
            self.held = False
            self._next()
        self._update_reading()

    def data_received(self, data: bytes) -> None:
        if self.stopped:
            return  # refused: what the client still sends is dropped
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # The request was answered as plain HTTP/1.1 (an upgrade may be declined); what follows it is another
            # protocol, so the connection closes after the answers.
            self._refuse(0, "")
            return
        except httptools.HttpParserError as exc:
            if not self.stopped:
                self._refuse(400, f"malformed HTTP request: {exc}")
            return
        if self.phase == _HEAD:
            # httptools keeps a header until its end: bound what an endless one holds. Bytes of a chunk in which
            # the request began are not counted (some are the previous request's), so the bound is one read late.
            if self.began_here:
                self.began_here = False
            else:
                self.head_bytes += len(data)
                if self.head_bytes > self.limits.max_header_bytes + self.limits.max_url_bytes:
                    self._refuse(431, f"request headers exceed {self.limits.max_header_bytes} bytes")

    # ---- httptools callbacks ----

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = {}
        self.header_count = 0
        self.header_bytes = 0
        self.head_bytes = 0
        self.began_here = True
        self.body = []
        self.body_size = 0
        if self.phase != _HEAD:
            self.phase = _HEAD
            self.since = self.server.now

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > self.limits.max_url_bytes:
            self._refuse(414, f"request target exceeds {self.limits.max_url_bytes} bytes")
            raise _Stop

    def on_header(self, name: bytes, value: bytes) -> None:
        # Every header is kept (by lower-case name): pipeline stages read what they need (authorization, host,
        # traceparent, ...) through the request's context.
        self.header_count += 1
        self.header_bytes += len(name) + len(value) + 4
        if self.header_bytes > self.limits.max_header_bytes or self.header_count > self.limits.max_headers:
            self._refuse(431, f"request headers exceed {self.limits.max_header_bytes} bytes or "
                              f"{self.limits.max_headers} fields")
            raise _Stop
        name = name.lower()
        if name == b"host" and name in self.headers:
            self._refuse(400, "more than one Host header")  # RFC 9112 §3.2
            raise _Stop
        self.headers[name] = value

    def on_headers_complete(self) -> None:
        self.phase = _BODY
        self.since = self.server.now
        headers = self.headers
        version = self.parser.get_http_version()
        if version != "1.1" and version != "1.0":  # RFC 9112 §2.3 / RFC 9110 §15.6.6
            if version[:1] in ("2", "3"):
                self._refuse(505, f"HTTP/{version} is not supported here (HTTP/1.1 and HTTP/1.0 are)")
            else:
                self._refuse(400, "the request line has no HTTP version")
            raise _Stop
        if version == "1.1" and b"host" not in headers:
            self._refuse(400, "an HTTP/1.1 request needs a Host header")  # RFC 9112 §3.2
            raise _Stop
        expect = headers.get(b"expect")
        continues = expect is not None and expect.lower() == b"100-continue"
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            if continues:
                self._refuse(417, f"request body of {int(declared)} bytes exceeds the limit of {self.limit} bytes "
                                  "(--http-max-input-size)")
            else:
                self._refuse(413, f"request body of {int(declared)} bytes exceeds the limit of {self.limit} bytes "
                                  "(--http-max-input-size)")
            raise _Stop
        if continues and self.transport is not None:
            if self.busy:
                self.pending_continue = True  # after the answers to the requests before it
            else:
                self.transport.write(_CONTINUE)

    def on_body(self, body: bytes) -> None:
        self.body_size += len(body)
        if self.body_size > self.limit:
            self._refuse(413, f"request body exceeds the limit of {self.limit} bytes (--http-max-input-size)")
            raise _Stop
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.phase = _IDLE
        self.pending_continue = False
        url = self.url
        if url[:1] != b"/" and url[:4].lower() == b"http":  # absolute form (RFC 9112 §3.2.2): its path only
            _, found, rest = url.partition(b"://")
            slash = rest.find(b"/")
            url = (rest[slash:] if slash >= 0 else b"/") if found else url
        query = url.find(b"?")
        path = (url if query < 0 else url[:query]).decode("latin-1")
        if query >= 0:
            self.headers[QUERY_HEADER] = url[query + 1:]
        if self.peer:
            self.headers[PEER_HEADER] = self.peer
        if "%" in path:
            from urllib.parse import unquote

            path = unquote(path)
        body = self.body[0] if len(self.body) == 1 else b"".join(self.body)
        request = _Request(self.parser.get_method().decode("latin-1"), path, self.headers, body,
                           self.parser.should_keep_alive())
        if self.busy or self.write_paused:
            # Behind a request in progress, or behind answers the client has not read (pipelined requests read
            # in one chunk, each answered at once): it waits its turn.
            if not self.busy:
                self.busy = self.held = True  # resume_writing starts it
            self.waiting.append(request)
            self.queued_bytes += len(body)
            if len(self.waiting) >= self.limits.max_pipelined or self.queued_bytes >= self.limits.max_pipelined_bytes:
                self._update_reading()
        else:
            self._start(request)

    # ---- answering ----

    def _start(self, request: _Request) -> None:
        self.busy = True
        reply = request.reply
        if reply is not None:
            if reply[0]:
                self._answer(request, reply)
            else:
                self.busy = False
                if self.transport is not None:
                    self._linger(self.transport)
            return
        self.arrivals.arrived_now(self.loop)
        # Run eagerly, as the request is read: most requests (a model run inline on the loop, an answer from
        # memory) never wait, and finish here without the cost of a task and a loop iteration. One that waits
        # (a batch, an instance thread, a model loading) goes on in a task from where it stopped.
        try:
            task = start_eagerly(self.loop, self._run(request))
        except Exception:  # handle() answers its own errors: this is a failure to write the answer
            log.exception("failed to answer %s %s", request.method, request.path)
            if self.transport is not None:
                self.transport.abort()
            return
        if task is not None:
            self.task = task

    async def _run(self, request: _Request) -> None:
        reply = await self.frontend.handle(request.method, request.path, request.headers, request.body)
        self.task = None
        self._answer(request, reply)

    @staticmethod
    def _write_head(transport: asyncio.Transport, status: int, headers: list[tuple[bytes, bytes]], payload: bytes,
                    keep_alive: bool, method: str | bytes) -> None:
        head = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Unknown")), _Clock.date()]
        for name, value in headers:
            head.append(b"%s: %s\r\n" % (name, value))
        head.append(b"content-length: %d\r\n" % len(payload))
        if not keep_alive:
            head.append(b"connection: close\r\n")
        head.append(b"\r\n")
        if method == "HEAD":
            transport.write(b"".join(head))
        elif len(payload) < 65536:
            head.append(payload)
            transport.write(b"".join(head))
        else:
            transport.write(b"".join(head))
            transport.write(payload)

    def _answer(self, request: _Request, reply: Reply) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            self.busy = False
            return
        status, payload, headers = reply
        keep_alive = request.keep_alive
        self._write_head(transport, status, headers, payload, keep_alive, request.method)
        if not keep_alive:
            self.busy = False
            if request.reply is not None:
                self._linger(transport)
            else:
                transport.close()
            return
        self._next()

    def _next(self) -> None:
        """The answer before is written: start the next waiting request, or wait for one."""
        waiting = self.waiting
        if waiting:
            if self.write_paused:
                self.held = True
                return
            request = waiting.popleft()
            self.queued_bytes -= len(request.body)
            if not self.reading:
                self._update_reading()
            self._start(request)
            return
        self.busy = False
        if self.phase == _IDLE:
            self.since = self.server.now
        elif self.pending_continue and self.transport is not None:
            self.pending_continue = False
            self.since = self.server.now
            self.transport.write(_CONTINUE)
        if not self.reading:
            self._update_reading()

    def _update_reading(self) -> None:
        """Pause reading while the connection holds enough (or is refused), resume once it has drained."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        limits = self.limits
        if self.reading:
            if (self.stopped or self.write_paused or len(self.waiting) >= limits.max_pipelined
                    or self.queued_bytes >= limits.max_pipelined_bytes):
                self.reading = False
                transport.pause_reading()
        elif (not self.stopped and not self.write_paused and len(self.waiting) <= limits.max_pipelined // 2
              and self.queued_bytes <= limits.max_pipelined_bytes // 2):
            self.reading = True
            transport.resume_reading()
            self.since = self.server.now  # a paused connection's timeouts do not run

    def _refuse(self, status: int, message: str) -> None:
        """Answer `status` (0: nothing) after the requests already read, then close; read nothing more."""
        if self.stopped or self.transport is None:
            return
        self.stopped = True
        self.pending_continue = False
        self._update_reading()
        request = _Request("", "", {}, b"", False, error_reply(status, message))
        if self.busy:
            self.waiting.append(request)
        else:
            self._start(request)

    def _linger(self, transport: asyncio.Transport) -> None:
        """Half-close after a refusal; drop what the client still sends for LINGER_S, then close."""
        if transport.is_closing():
            return
        if not transport.can_write_eof():
            transport.close()
            return
        try:
            transport.write_eof()
        except (OSError, RuntimeError):
            transport.close()
            return
        if not self.reading:
            self.reading = True
            transport.resume_reading()
        self.loop.call_later(LINGER_S, transport.close)

    def check(self, now: float) -> None:
        """Close the connection if the client took too long (called about every HttpServer.tick seconds)."""
        if not self.reading or self.stopped or self.transport is None:
            return  # paused by the server, or already refused: not the client's time
        phase = self.phase
        if phase == _HEAD:
            if now - self.since > self.limits.header_timeout:
                self._refuse(408, f"request headers not received within {self.limits.header_timeout:g} s")
        elif phase == _BODY:
            if not self.pending_continue and now - self.since > self.limits.body_timeout:
                self._refuse(408, f"request body not received within {self.limits.body_timeout:g} s")
        elif not self.busy and now - self.since > self.limits.keep_alive_timeout:
            self.transport.close()

    def evictable(self) -> bool:
        """No request of this connection is being answered (it is idle, lingering or sending one)."""
        return not self.busy and not self.waiting and self.transport is not None

    def close_if_idle(self) -> bool:
        if self.busy:
            return False
        if self.transport is not None:
            self.transport.close()
        return True


class HttpServer:
    """Listens on host:port and serves `frontend` until `stop`.

    `limits`: what a client may make the server hold (default HttpLimits()); `keep_alive_timeout`, when given,
    replaces theirs. `tls`: serve HTTPS only, with these files (default: plain HTTP). `reuse_port`: listen with
    SO_REUSEPORT, so several processes share the port (the HTTP workers of `--workers`, frontends/workers.py).
    """

    def __init__(self, frontend: HttpFrontend, host: str, port: int, *,
                 keep_alive_timeout: float | None = None, limits: HttpLimits | None = None,
                 tls: TlsSettings | None = None, reuse_port: bool = False) -> None:
        self.frontend = frontend
        self.tls = tls
        self.reuse_port = reuse_port
        self.host = host
        self.port = port
        self.max_input_size = frontend.max_input_size
        if limits is None:
            limits = HttpLimits()
        if keep_alive_timeout is not None:
            limits = dataclasses.replace(limits, keep_alive_timeout=keep_alive_timeout)
        self.limits = limits
        self.keep_alive_timeout = limits.keep_alive_timeout
        self.max_connections = limits.max_connections if limits.max_connections > 0 else default_max_connections()
        # How often connections are checked for timeouts; `now` is the loop's time at the last check.
        self.tick = max(0.01, min(1.0, limits.header_timeout / 4, limits.body_timeout / 4,
                                  limits.keep_alive_timeout / 4))
        self.now = 0.0
        self.connections: dict[_Connection, None] = {}  # in the order they were accepted
        self._server: asyncio.base_events.Server | None = None
        self._checker: asyncio.TimerHandle | None = None
        self.loop: Any = None

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.now = self.loop.time()
        secure: dict[str, Any] = {}
        if self.tls is not None:
            # A client that connects and never finishes the handshake is not yet a connection the timeout checks
            # see: the handshake gets the header timeout of its own.
            secure = {"ssl": self.tls.server_context(alpn=("http/1.1",)),
                      "ssl_handshake_timeout": self.limits.header_timeout}
        self._server = await self.loop.create_server(lambda: _Connection(self), self.host, self.port,
                                                     reuse_address=True, reuse_port=self.reuse_port or None,
                                                     backlog=4096, **secure)
        if self.port == 0:
            self.port = self._server.sockets[0].getsockname()[1]
        self._checker = self.loop.call_later(self.tick, self._check)

    def _check(self) -> None:
        self.now = now = self.loop.time()
        for connection in list(self.connections):
            connection.check(now)
        self._checker = self.loop.call_later(self.tick, self._check)

    def evict(self) -> bool:
        """At the connection cap: close the oldest connection with no request being answered; False if none."""
        for connection in self.connections:
            if connection.evictable():
                del self.connections[connection]
                if connection.transport is not None:
                    connection.transport.close()
                return True
        return False

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
        if self._checker is not None:
            self._checker.cancel()
            self._checker = None
        for connection in list(self.connections):
            if connection.transport is not None:
                connection.transport.close()
