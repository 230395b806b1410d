"""Front-end worker processes (`inferd serve --workers N`): every core parses, decodes and encodes; one server
answers.

A Python server is held to one core by its event loop and the GIL. With N >= 2 the main process starts N worker
processes that each listen on the HTTP port with SO_REUSEPORT (the kernel spreads connections among them) and run
the ordinary `HttpServer`. What stays in the main process is everything that makes it one server: the models and
their instances (loaded once), the pipeline with all its stages (access log, auth, traffic, statistics, metrics,
audit, cache), the repository API, the shared-memory regions and the metrics port.

The workers serve the gRPC port too (`grpc/worker.py`, on the same loop as their HttpServer, SO_REUSEPORT): a
ModelInfer of plain tensors is decoded there and sent to main as an "infer" message whose `path` is None,
`headers` the call's metadata and `route` the gRPC method (main runs it with protocol `v2-grpc`); every other call
is proxied as bytes to main's own gRPC server, which listens on a private Unix socket instead of the port.

A worker answers V2 inference (`POST /v2/models/{m}[/versions/{v}]/infer`, JSON and binary tensor data) in its
fast path: it decodes the body into numpy arrays with the same codec (`v2.py`), sends main one message (the
decoded request and the request's headers), and encodes main's answer exactly as the single process does
(`v2_api.infer_reply`). Main turns the message into the pipeline's `InferenceRequest` and `RequestContext`
(protocol `v2-http`, the route's pattern, the headers) and runs `Server.infer_request`, many at once per worker.
Everything else (every other route, an infer request the worker cannot decode, one with shared-memory inputs or
outputs, a compressed body; every request when `--auth-config`, `--host-routing` or a restricted inference API is
set) goes to main as it came (method, path, headers, body) and is answered by main's `HttpFrontend`, unchanged.

The channel is a Unix socket pair per worker carrying length-prefixed pickled messages (the two ends are this
program's own processes). Tensors of a message whose fixed-size data is `ARENA_THRESHOLD` bytes or more travel in
shared memory (`memory/arenas.py`): the sender writes them into a segment of its own that stays reserved for
the message until the other side is done with it (request segments: until the answer arrives; answer segments:
until the worker sends `free`); the receiver reads numpy views of it.

Messages (tuples; `rid` is the worker's request number):

    worker -> main: ("ready", port) | ("infer", rid, model, version, path, route, headers, inline, ref, datatypes,
                    request_id, outputs, parameters) (gRPC: path None, headers the metadata)
                    | ("http", rid, method, path, headers, body, ref) | ("cancel", rid) | ("free", slot)
    main -> worker: ("config", WorkerConfig) | ("ok", rid, model, version, response_id, parameters, inline, ref,
                    variant) | ("error", rid, kind, message, retry_after) | ("reply", rid, status, payload,
                    headers) | ("cancelled", rid) | ("stop", timeout)

On SIGTERM main stops the workers first (each stops accepting, answers what it has accepted, then exits) and
serves their requests until they are gone; a worker whose channel closes (main is gone) exits at once. Workers
ignore SIGINT and SIGTERM themselves: main decides when they stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import multiprocessing.resource_tracker
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from ..limits import RequestLimits
from ..memory import SHM_REGION
from ..memory.arenas import ChildArenas, Header, ServerArena, layout, view, write
from ..types import ErrorKind, InferenceRequest, InferenceResponse, InferError, RequestedOutput, Tensors, describe_error
from .eager import start_eagerly
from .http.messages import HttpRequest, error_reply, infer_error_reply
from .http.routes import INFERENCE, SERVE_ROUTES, RouteTable
from .http.v2 import decode_infer_request
from .http.v2_api import infer_reply, model_infer

if TYPE_CHECKING:
    from ..pipeline import RequestContext
    from .grpc.worker import GrpcWorkerConfig
    from .http.app import HttpFrontend
    from .http.messages import Reply
    from .http.server import HttpLimits
    from .tls import TlsSettings

__all__ = ["ARENA_THRESHOLD", "Channel", "Slots", "WorkerConfig", "WorkerPool", "mapped_tensors"]

log = logging.getLogger("inferd.workers")

ARENA_THRESHOLD = 64 * 1024  # a message's tensors of this many bytes or more go through shared memory
MAX_SLOTS = 256  # segments one side keeps per worker; past them (that many big messages in flight) data goes inline
START_TIMEOUT_S = 60.0  # for a worker to listen and say so
_LENGTH = struct.Struct("!I")
_PICKLE = pickle.HIGHEST_PROTOCOL
# An arena reference: (slot, segment name, the tensors' headers).
Ref = tuple[int, str, list[Header]]
# Tensors inline in a message: name -> (dtype str, shape, bytes), or an object / structured array (pickled).
Inline = dict[str, Any]


# ---- the channel: length-prefixed pickled messages ----


class Channel(asyncio.Protocol):
    """One end of a worker's socket pair: `send` a message, `on_message` for each one received, `on_lost` at the
    end. A message is a 4-byte big-endian length and that many bytes of pickle."""

    def __init__(self, on_message: Callable[[Any], None], on_lost: Callable[[], None]) -> None:
        self.on_message = on_message
        self.on_lost = on_lost
        self.transport: asyncio.Transport | None = None
        self._chunks: list[bytes] = []  # the start of a message not yet whole
        self._have = 0
        self._need = 0
        self._out: list[bytes] = []  # messages sent in this loop iteration, written together at its end

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.on_lost()

    def send(self, message: Any) -> None:
        """Queue a message; the messages of one loop iteration go in one write (one system call, not one each)."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return  # the other side is gone: nothing waits for this
        payload = pickle.dumps(message, protocol=_PICKLE)
        out = self._out
        if not out:
            asyncio.get_running_loop().call_soon(self._flush)
        out.append(_LENGTH.pack(len(payload)))
        out.append(payload)

    def _flush(self) -> None:
        out = self._out
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(b"".join(out))
        out.clear()

    def data_received(self, data: bytes) -> None:
        if self._chunks:
            self._chunks.append(data)
            self._have += len(data)
            if self._have < self._need:
                return  # a big message still arriving: joined once, when whole
            data = b"".join(self._chunks)
            self._chunks.clear()
        buffer = memoryview(data)
        end = len(data)
        position = 0
        need = _LENGTH.size
        while end - position >= _LENGTH.size:
            size = _LENGTH.unpack_from(buffer, position)[0]
            start = position + _LENGTH.size
            if end - start < size:
                need = _LENGTH.size + size
                break
            message = pickle.loads(buffer[start:start + size])
            position = start + size
            self.on_message(message)
        if position < end:
            rest = data[position:]
            self._chunks.append(rest)
            self._have = len(rest)
            self._need = need


# ---- tensors through shared memory ----


class Slots:
    """The shared-memory segments this side writes messages' tensors into, one per message in flight: a slot is
    taken by `put` and comes back with `release` once the other side is done reading it."""

    def __init__(self, threshold: int = ARENA_THRESHOLD, max_slots: int = MAX_SLOTS) -> None:
        self.threshold = threshold
        self.max_slots = max_slots
        self.arenas: list[ServerArena] = []
        self.free: list[int] = []

    def put(self, tensors: Tensors) -> tuple[Inline, Ref | None]:
        """(the tensors that go inline in the message, the arena reference of the others or None)."""
        headers, inline, total = layout(tensors)
        if total < self.threshold or (not self.free and len(self.arenas) >= self.max_slots):
            return _inline(tensors), None
        slot = self.free.pop() if self.free else self._add()
        try:
            shm = self.arenas[slot].ensure(total)
        except InferError:  # /dev/shm is full: the socket carries them instead
            self.free.append(slot)
            return _inline(tensors), None
        write(shm, headers, tensors)
        return _inline(inline), (slot, shm.name, headers)

    def _add(self) -> int:
        self.arenas.append(ServerArena())
        return len(self.arenas) - 1

    def release(self, slot: int) -> None:
        self.free.append(slot)

    def close(self) -> None:
        for arena in self.arenas:
            arena.release()
        self.arenas.clear()
        self.free.clear()


def _inline(tensors: Tensors) -> Inline:
    """Tensors as a message carries them: fixed-size ones as (dtype, shape, bytes), which pickle far faster than
    arrays do; object (BYTES) and structured ones as arrays."""
    return {name: array if array.dtype.hasobject or array.dtype.fields is not None
            else (array.dtype.str, array.shape, array.tobytes()) for name, array in tensors.items()}


def uses_client_memory(request: InferenceRequest) -> bool:
    """The request reads or writes client shared-memory regions (main's, so main must see it as it came)."""
    return bool(request.shared_inputs) or (bool(request.outputs) and any(
        SHM_REGION in o.parameters for o in request.outputs or ()))


def mapped_tensors(arenas: ChildArenas, inline: Inline, ref: Ref | None) -> Tensors:
    """A message's tensors: the inline ones (read-only arrays over the message's bytes) and numpy views of the
    sender's segment."""
    tensors: Tensors = {}
    for name, value in inline.items():
        if type(value) is tuple:
            dtype, shape, data = value
            tensors[name] = np.frombuffer(data, dtype=dtype).reshape(shape)
        else:
            tensors[name] = value
    if ref is not None:
        slot, name, headers = ref
        shm = arenas.get(str(slot), name)
        for header in headers:
            tensors[header[0]] = view(shm, header)
    return tensors


# ---- the main process's side ----


@dataclass(frozen=True)
class WorkerConfig:
    """What a worker needs to serve: where, with which limits, and whether it may answer inference itself."""

    address: str
    port: int
    limits: HttpLimits
    max_input_size: int
    request_limits: RequestLimits
    tls: TlsSettings | None
    fast_infer: bool  # False: every request goes to main as it came (see the module docstring)
    gateway: bool  # main authenticates: forwarded requests carry the client's address for its audit trail
    log_level: int
    log_file: str
    grpc: GrpcWorkerConfig | None = None  # the workers serve the gRPC port too (`grpc/worker.py`)


class _WorkerLink:
    """Main's end of one worker: the process, its channel, and the requests of it being answered."""

    def __init__(self, pool: WorkerPool, index: int) -> None:
        self.pool = pool
        self.index = index
        self.server = pool.frontend.server
        self.loop = asyncio.get_running_loop()
        self.arrivals = self.server.arrivals
        self.slots = Slots()
        self.arenas = ChildArenas()
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self.ready: asyncio.Future[int] = self.loop.create_future()
        self.gone: asyncio.Future[None] = self.loop.create_future()
        # A stage that keeps a request's inputs after it ends (the payload log's queue) gets copies, not views of
        # the worker's segment, which the worker reuses once the answer is sent.
        self.copy_inputs = self.server.payload_log is not None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        tracker_fd = multiprocessing.resource_tracker.getfd()
        if tracker_fd is None:
            raise OSError("multiprocessing's resource tracker is not running")
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "inferd.frontends.workers", str(theirs.fileno()), str(tracker_fd)],
                stdin=subprocess.DEVNULL, pass_fds=(theirs.fileno(), tracker_fd))
        finally:
            theirs.close()
        self.pid = self.process.pid
        self.sock = ours
        self.channel = Channel(self._on_message, self._on_lost)

    async def connect(self, config: WorkerConfig) -> None:
        await self.loop.connect_accepted_socket(lambda: self.channel, self.sock)
        self.channel.send(("config", config))

    def _on_lost(self) -> None:
        for rid, task in list(self.tasks.items()):
            self._cancel(rid, task)  # no one is left to answer
        if not self.ready.done():
            self.ready.set_exception(OSError(f"HTTP worker {self.index} (pid {self.pid}) ended while starting"))
        if not self.gone.done():
            self.gone.set_result(None)
        self.pool.ended(self)

    def _on_message(self, message: Any) -> None:
        kind = message[0]
        if kind == "infer" or kind == "http":
            rid = message[1]
            self.arrivals.arrived_now(self.loop)
            # Eagerly, as the HTTP server runs its requests: one that does not wait ends here, with no task.
            task = start_eagerly(self.loop, self._infer(message) if kind == "infer" else self._forward(message))
            if task is not None:
                self.tasks[rid] = task
        elif kind == "free":
            self.slots.release(message[1])
        elif kind == "cancel":
            task = self.tasks.get(message[1])
            if task is not None:
                self._cancel(message[1], task)
        elif kind == "ready":
            if not self.ready.done():
                self.ready.set_result(message[1])

    @staticmethod
    def _cancel(rid: int, task: asyncio.Task[None]) -> None:
        task.cancel()  # it started as it arrived (start_eagerly): its own handler answers "cancelled"

    async def _infer(self, message: Any) -> None:

        (_, rid, model, version, path, route, headers, inline, ref, datatypes, request_id, outputs,
         parameters) = message
        send = self.channel.send
        try:
            inputs = mapped_tensors(self.arenas, inline, ref)
            if self.copy_inputs and ref is not None:
                inputs = {name: np.array(array) for name, array in inputs.items()}
            request = InferenceRequest(model, inputs, datatypes, version, request_id,
                                       None if outputs is None else [RequestedOutput(n, p) for n, p in outputs],
                                       parameters)
            del inputs
            context: RequestContext | None
            if path is None:  # a gRPC ModelInfer: `headers` is the call's metadata, `route` its method
                from ..pipeline import RequestContext

                context = RequestContext("v2-grpc", metadata=lambda: headers, endpoint=route)
                response = await self.server.infer_request(request, context)
            else:
                http_request = HttpRequest("POST", path, headers, b"", route)
                response = await self.server.infer_request(request, http_request.context("v2-http"))
                context = http_request.last_context
            del request
            out_inline, out_ref = self.slots.put(response.outputs)
            send(("ok", rid, response.model_name, response.model_version, response.id, response.parameters,
                  out_inline, out_ref, context.variant if context is not None else ""))
        except InferError as exc:
            send(("error", rid, exc.kind.name, exc.message, exc.retry_after))
        except asyncio.CancelledError:
            send(("cancelled", rid))
            raise
        except Exception as exc:  # as HttpFrontend.handle: a bug is a 500 for this request, never a dead server
            log.exception("unhandled error on POST %s", path)
            send(("reply", rid, *error_reply(500, f"internal error: {describe_error(exc)}")))
        finally:
            self.tasks.pop(rid, None)

    async def _forward(self, message: Any) -> None:
        _, rid, method, path, headers, body, ref = message
        try:
            if ref is not None:
                body = mapped_tensors(self.arenas, {}, ref)["body"].tobytes()
            status, payload, reply_headers = await self.pool.frontend.handle(method, path, headers, body)
            self.channel.send(("reply", rid, status, payload, reply_headers))
        except asyncio.CancelledError:
            self.channel.send(("cancelled", rid))
            raise
        finally:
            self.tasks.pop(rid, None)

    def close(self) -> None:
        if self.channel.transport is not None:
            self.channel.transport.close()
        self.sock.close()
        self.arenas.close()
        self.slots.close()


class WorkerPool:
    """The HTTP door served by `count` worker processes: `start`, `port`, `stop` as `HttpServer` has them."""

    def __init__(self, frontend: HttpFrontend, address: str, port: int, count: int, *, limits: HttpLimits,
                 tls: TlsSettings | None = None, grpc: GrpcWorkerConfig | None = None) -> None:
        self.frontend = frontend
        self.grpc = grpc  # the workers serve gRPC too; `grpc_port` is the bound port
        self.address = address
        self.port = port
        self.count = count
        self.limits = limits
        self.tls = tls
        self.links: list[_WorkerLink] = []
        self.config: WorkerConfig | None = None
        self.stopping = False
        self._replacing: set[asyncio.Task[None]] = set()

    @property
    def grpc_port(self) -> int | None:
        return None if self.grpc is None else self.grpc.port

    @property
    def pids(self) -> list[int]:
        return [link.pid for link in self.links]

    def _config(self, port: int) -> WorkerConfig:
        frontend = self.frontend
        server = frontend.server
        root = logging.getLogger("inferd")
        log_file = ""
        for handler in [*root.handlers, *logging.getLogger().handlers]:
            if isinstance(handler, logging.FileHandler):
                log_file = handler.baseFilename
                break
        fast = server.gateway is None and frontend.hosts is None and INFERENCE not in frontend.restricted
        return WorkerConfig(self.address, port, self.limits, frontend.max_input_size, server.limits, self.tls,
                            fast, server.gateway is not None, root.getEffectiveLevel(), log_file, self.grpc)

    async def start(self) -> None:
        """Reserve the port (port 0: the system picks one, the same for every worker), start the workers and
        wait until each listens on it; OSError when one cannot."""
        with contextlib.ExitStack() as reserved:
            port = _reserve(reserved, self.address, self.port)
            if self.grpc is not None:
                self.grpc = dataclasses.replace(self.grpc, port=_reserve(reserved, self.grpc.address, self.grpc.port))
            config = self.config = self._config(port)
            try:
                for index in range(self.count):
                    link = _WorkerLink(self, index)
                    self.links.append(link)
                    await link.connect(config)
                done, _ = await asyncio.wait([link.ready for link in self.links], timeout=START_TIMEOUT_S)
                for link in self.links:
                    if link.ready not in done:
                        raise OSError(f"HTTP worker {link.index} (pid {link.pid}) did not start within "
                                      f"{START_TIMEOUT_S:.0f} s")
                    link.ready.result()  # its OSError (it could not listen) is the door's
            except BaseException:
                await self.stop(0)
                raise
        self.port = port
        log.info("HTTP served by %d worker processes (pids %s); models, statistics and metrics in this one (pid "
                 "%d)", self.count, ", ".join(map(str, self.pids)), os.getpid())

    async def stop(self, timeout: float) -> None:
        """Each worker stops accepting, answers what it accepted (up to `timeout` seconds), and exits; main serves
        their requests until then. A worker still running after that is killed."""
        self.stopping = True
        for task in self._replacing:
            task.cancel()
        for link in self.links:
            link.channel.send(("stop", timeout))
        deadline = time.monotonic() + timeout + 2.0
        for link in self.links:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(link.gone), max(0.0, deadline - time.monotonic()))
        for link in self.links:
            if link.process.poll() is None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    await asyncio.to_thread(link.process.wait, max(0.1, deadline - time.monotonic()))
            if link.process.poll() is None:
                log.warning("HTTP worker pid %d did not stop in time; killing it", link.pid)
                link.process.kill()
                await asyncio.to_thread(link.process.wait)
            link.close()

    def ended(self, link: _WorkerLink) -> None:
        """A worker's channel closed: unless the pool is stopping, a worker that had started is replaced (its
        connections are lost; the port is served by the others meanwhile)."""
        if self.stopping or not link.ready.done() or link.ready.exception() is not None:
            return
        task = asyncio.get_running_loop().create_task(self._replace(link))
        self._replacing.add(task)
        task.add_done_callback(self._replacing.discard)

    async def _replace(self, link: _WorkerLink) -> None:
        code = await asyncio.to_thread(link.process.wait)
        log.error("HTTP worker pid %d ended unexpectedly (exit code %d); starting another", link.pid, code)
        link.close()
        config = self.config
        assert config is not None
        new = _WorkerLink(self, link.index)
        self.links[self.links.index(link)] = new
        try:
            await new.connect(config)
            await asyncio.wait_for(asyncio.shield(new.ready), START_TIMEOUT_S)
        except (OSError, asyncio.TimeoutError) as exc:
            log.error("HTTP worker %d could not be restarted: %s", link.index, exc)
            return
        log.info("HTTP worker %d restarted (pid %d)", link.index, new.pid)


def _reserve(stack: contextlib.ExitStack, address: str, port: int) -> int:
    """Bind (never listen: it takes no connections) a socket that lets the workers bind `port` with SO_REUSEPORT
    and keeps it theirs while they start; port 0: the system picks one, the same for every worker."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    reserve = stack.enter_context(socket.socket(family, socket.SOCK_STREAM))
    reserve.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    reserve.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    reserve.bind((address, port))
    return int(reserve.getsockname()[1])


# ---- the worker process's side ----


class _NoArrivals:
    """The arrival hints a worker's HttpServer reports (`scheduling.base.Arrivals`' methods, whichever it calls):
    nothing batches in a worker, so they go nowhere; main reports each request it receives to its own."""

    def __getattr__(self, name: str) -> Callable[..., None]:
        return _ignore


def _ignore(*_: object) -> None:
    pass


class _WorkerApp:
    """What a worker's `HttpServer` calls (the `HttpFrontend` interface it uses): V2 inference decoded here and
    run by main; anything else answered by main as it came."""

    def __init__(self, config: WorkerConfig, channel: Channel) -> None:

        self.config = config
        self.channel = channel
        self.max_input_size = config.max_input_size
        self.gateway: object | None = object() if config.gateway else None  # HttpServer keeps the peer's address
        self.server = self  # HttpServer reports arrivals to `frontend.server.arrivals`
        self.arrivals = _NoArrivals()  # nothing batches here: main reports its own arrivals
        self.table = RouteTable(SERVE_ROUTES)
        self.model_infer = model_infer
        self.slots = Slots()
        self.arenas = ChildArenas()
        self.pending: dict[int, tuple[asyncio.Future[Any], int | None]] = {}
        self.numbers = itertools.count()

    async def handle(self, method: str, path: str, headers: dict[bytes, bytes], body: bytes) -> Reply:
        if self.config.fast_infer and method == "POST" and b"content-encoding" not in headers:
            route, params = self.table.match(method, path)
            if route is not None and route.handler is self.model_infer and not route.routed:
                reply = await self._infer(path, route.path, params, headers, body)  # type: ignore[arg-type]
                if reply is not None:
                    return reply
        return await self._forward(method, path, headers, body)

    async def _infer(self, path: str, route: str, params: dict[str, str], headers: dict[bytes, bytes],
                     body: bytes) -> Reply | None:
        """The answer, or None when main must see the request as it came."""

        name = params["model_name"]
        version = params.get("model_version", "")
        raw_length = headers.get(b"inference-header-content-length")
        try:
            header_length = None if raw_length is None else int(raw_length)
            request, options = decode_infer_request(body, header_length, name, version, self.config.request_limits)
        except (InferError, ValueError):
            return None  # main answers it, with the error the single process gives (an unknown model first)
        if uses_client_memory(request):
            return None  # client shared memory: main reads and writes the regions
        answer = await self.ask_infer(request, path, route, headers)
        kind = answer[0]
        if kind == "ok":
            with self.response_of(answer) as (response, variant):
                try:
                    reply = infer_reply(response, options, headers.get(b"accept-encoding"))
                except InferError as exc:
                    reply = infer_error_reply(exc)
                except Exception as exc:
                    log.exception("unhandled error on POST %s", path)
                    reply = error_reply(500, f"internal error: {describe_error(exc)}")
            if variant:
                reply = (reply[0], reply[1], [*reply[2], (b"x-inferd-variant", variant.encode())])
            return reply
        if kind == "error":
            error = InferError(ErrorKind[answer[2]], answer[3])
            error.retry_after = answer[4]
            return infer_error_reply(error)
        return answer[2], answer[3], answer[4]  # ("reply", rid, status, payload, headers)

    async def ask_infer(self, request: InferenceRequest, path: str | None, route: str, headers: Any) -> Any:
        """Main's answer to a decoded inference request (HTTP: its path and headers; gRPC: None and metadata)."""
        inline, ref = self.slots.put(request.inputs)
        outputs = None if request.outputs is None else [(o.name, o.parameters) for o in request.outputs]
        message = ("infer", 0, request.model_name, request.model_version, path, route, headers, inline, ref,
                   request.datatypes, request.id, outputs, request.parameters)
        return await self._ask(message, ref)

    @contextlib.contextmanager
    def response_of(self, answer: Any) -> Iterator[tuple[InferenceResponse, str]]:
        """The response in main's "ok" answer (its tensors read where main put them), and its traffic variant; the
        answer's segment is given back to main once the caller has encoded it."""
        _, _, model, model_version, response_id, parameters, out_inline, out_ref, variant = answer
        tensors = mapped_tensors(self.arenas, out_inline, out_ref)
        try:
            yield InferenceResponse(model, model_version, tensors, response_id, parameters), variant
        finally:
            del tensors
            if out_ref is not None:
                self.channel.send(("free", out_ref[0]))

    async def _forward(self, method: str, path: str, headers: dict[bytes, bytes], body: bytes) -> Reply:
        ref = None
        if len(body) >= self.slots.threshold:
            _, ref = self.slots.put({"body": np.frombuffer(body, dtype=np.uint8)})
        answer = await self._ask(("http", 0, method, path, headers, body if ref is None else None, ref), ref)
        return answer[2], answer[3], answer[4]

    async def _ask(self, message: tuple[Any, ...], ref: Ref | None) -> Any:
        """Send a request's message (its number filled in) and wait for main's answer; the request's segment is
        reserved until main has answered, even when the client went away meanwhile."""
        rid = next(self.numbers)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending[rid] = (future, None if ref is None else ref[0])
        self.channel.send((message[0], rid, *message[2:]))
        try:
            return await future
        except asyncio.CancelledError:
            if rid in self.pending:
                self.channel.send(("cancel", rid))
            raise

    def on_message(self, message: Any) -> None:
        kind = message[0]
        if kind in ("ok", "error", "reply", "cancelled"):
            future, slot = self.pending.pop(message[1], (None, None))
            if slot is not None:
                self.slots.release(slot)
            if future is not None and not future.done():
                future.set_result(message)
            elif kind == "ok" and message[7] is not None:
                self.channel.send(("free", message[7][0]))  # an answer nobody waits for: its segment goes back


async def _worker(fd: int) -> None:
    from .http.server import HttpServer

    loop = asyncio.get_running_loop()
    config_future: asyncio.Future[WorkerConfig] = loop.create_future()
    stop: asyncio.Future[float] = loop.create_future()  # the drain's timeout; 0.0 when main is gone
    app: _WorkerApp | None = None

    def on_message(message: Any) -> None:
        if message[0] == "config":
            config_future.set_result(message[1])
        elif message[0] == "stop":
            if not stop.done():
                stop.set_result(float(message[1]))
        elif app is not None:
            app.on_message(message)

    def on_lost() -> None:
        if not config_future.done():
            config_future.cancel()
        if not stop.done():
            stop.set_result(-1.0)

    channel = Channel(on_message, on_lost)
    await loop.connect_accepted_socket(lambda: channel, socket.socket(fileno=fd))
    try:
        config = await config_future
    except asyncio.CancelledError:
        return
    logging.basicConfig(level=config.log_level, filename=config.log_file or None,
                        format=f"%(levelname).1s%(asctime)s worker {os.getpid()}] %(message)s")
    app = _WorkerApp(config, channel)
    http = HttpServer(cast(Any, app), config.address, config.port, limits=config.limits, tls=config.tls,
                      reuse_port=True)
    try:
        await http.start()
    except OSError as exc:
        log.error("HTTP worker cannot listen on %s:%d: %s", config.address, config.port, exc)
        raise SystemExit(1) from None
    door = None
    if config.grpc is not None:
        from .grpc.worker import WorkerGrpc

        door = WorkerGrpc(config.grpc, app)
        try:
            await door.start()
        except OSError as exc:
            log.error("worker cannot serve gRPC on %s:%d: %s", config.grpc.address, config.grpc.port, exc)
            raise SystemExit(1) from None
    channel.send(("ready", http.port))
    timeout = await stop
    if timeout < 0:  # main is gone: nothing can be answered any more
        if config.grpc is not None:  # its private gRPC socket's folder, which a killed main could not remove
            import shutil

            shutil.rmtree(os.path.dirname(config.grpc.private.removeprefix("unix:")), ignore_errors=True)
        os._exit(0)
    await asyncio.gather(http.stop(timeout), *([door.stop(timeout)] if door is not None else []))
    app.slots.close()
    app.arenas.close()


def main(argv: list[str]) -> None:
    """A worker process's entry point: `python -m inferd.frontends.workers CHANNEL_FD TRACKER_FD`."""
    fd, tracker_fd = int(argv[0]), int(argv[1])
    # Main's resource tracker (as instance processes share it, instances/worker.py): on Python < 3.13 mapping a
    # segment registers it, and a tracker of the worker's own would unlink main's segments when the worker exits.
    multiprocessing.resource_tracker._resource_tracker._fd = tracker_fd  # type: ignore[attr-defined]
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)  # main decides when the workers stop (its drain, its exit timeout)
    try:
        import uvloop
    except ImportError:
        asyncio.run(_worker(fd))
    else:
        uvloop.run(_worker(fd))


if __name__ == "__main__":
    main(sys.argv[1:])
