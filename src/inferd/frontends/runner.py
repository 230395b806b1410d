"""Running a Server's front doors until SIGINT / SIGTERM: what `inferd serve` and `inferd microservice` share.

The HTTP server runs on the event loop, the gRPC server on its own thread and loop, the metrics endpoint on its
own HTTP thread. On a signal (SIGINT / SIGTERM), all within `exit_timeout` seconds of it:

1. not ready: `/v2/health/ready` 400, gRPC ServerReady false, grpc.health NOT_SERVING; with a drain delay the front
   doors still accept for that long, so load balancers see it before connections are refused;
2. stop accepting and let requests in flight finish;
3. retire the models (`Server.close` with what is left of the exit timeout); at the deadline the model instance
   processes still busy are terminated (then killed), so calls blocked on a hung model return;
4. a last resort: a process still running `EXIT_MARGIN_S` after the deadline ends itself with EXIT_OVERRUN_CODE.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import ipaddress
import logging
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from ..server import Server
from .http.app import HttpFrontend
from .http.server import HttpLimits, HttpServer
from .tls import TlsSettings

if TYPE_CHECKING:
    from .grpc import GrpcFrontend
    from .workers import WorkerPool

log = logging.getLogger("inferd")

DRAIN_DELAY_ENV = "INFERD_DRAIN_DELAY_SECS"  # the drain delay when the caller gives none (default 0)
EXIT_MARGIN_S = 5.0  # after the exit deadline: for the models' processes to end, then the watchdog's turn
CLOSE_GRACE_S = 2.0  # after terminating the instance processes: for the model retirement to finish
EXIT_OVERRUN_CODE = 1  # the exit code when the watchdog had to end the process
_shutdown_done = threading.Event()  # set when run_event_loop returns


@dataclass
class Endpoint:
    """Where one front door listens."""

    address: str
    port: int


class ListenError(OSError):
    """A front door cannot listen where it is told to: one line naming the address, the port and the flag that
    changes it (what `inferd serve` prints before it exits with 1, instead of a traceback)."""

    @classmethod
    def of(cls, door: str, endpoint: Endpoint, exc: OSError) -> ListenError:
        port_flag, address_flag = _DOOR_FLAGS[door]
        where = f"cannot listen on {endpoint.address}:{endpoint.port} ({_DOOR_NAMES[door]})"
        if exc.errno == errno.EADDRINUSE or "in use" in str(exc):
            return cls(f"{where}: the port is already in use; stop what holds it, or pick another port with "
                       f"{port_flag}")
        reason = exc.strerror or " ".join(str(exc).split())
        return cls(f"{where}: {reason}; check {address_flag} and {port_flag}")


# The flags that set each door's port and address (`inferd serve` and `inferd microservice` name them alike).
_DOOR_FLAGS = {"http": ("--http-port", "--http-address"), "grpc": ("--grpc-port", "--grpc-address"),
               "metrics": ("--metrics-port", "--metrics-address"),
               "torchserve-management": ("--torchserve-management-port", "--torchserve-management-address")}
_DOOR_NAMES = {"http": "HTTP", "grpc": "gRPC", "metrics": "metrics",
               "torchserve-management": "TorchServe management"}


def check_ports(doors: Mapping[str, Endpoint | None]) -> None:
    """Bind every door's port once (and let it go) before any door starts, so that a port in use stops the
    server before it serves anything, or loads a model when called early; raises ListenError. Port 0 (the system
    picks one) always binds. Two doors given one port is the same mistake, said as such."""
    taken: list[tuple[str, Endpoint]] = []
    for door, endpoint in doors.items():
        if endpoint is None or endpoint.port == 0:
            continue
        for other, where in taken:
            if where.port == endpoint.port and _overlap(where.address, endpoint.address):
                raise ListenError(f"cannot listen on port {endpoint.port} for {_DOOR_NAMES[door]}: "
                                  f"{_DOOR_FLAGS[other][0]} names it too; pick another port with "
                                  f"{_DOOR_FLAGS[door][0]}")
        taken.append((door, endpoint))
        _bind(door, endpoint, functools.partial(_probe, endpoint))


def _overlap(first: str, second: str) -> bool:
    """Whether two listen addresses take the same port: the same address, or one of them every address."""
    wildcards = ("", "0.0.0.0", "::", "[::]")
    return first == second or first in wildcards or second in wildcards


def _probe(endpoint: Endpoint) -> None:
    """Bind the address's port as the doors do (SO_REUSEADDR: a port left in TIME_WAIT is free), then close."""
    try:
        infos = socket.getaddrinfo(endpoint.address or None, endpoint.port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise OSError(errno.EADDRNOTAVAIL, f"unknown address ({exc.strerror})") from None
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)


_T = TypeVar("_T")


def _bind(door: str, endpoint: Endpoint, start: Callable[[], _T]) -> _T:
    """`start()`, its OSError turned into the door's ListenError."""
    try:
        return start()
    except ListenError:
        raise
    except OSError as exc:
        raise ListenError.of(door, endpoint, exc) from None


def run_event_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run `main` on uvloop where it is installed, else on asyncio's own loop; then the exit watchdog of
    `serve_until_signal` (if it started one) stands down.

    A door that cannot listen (ListenError) is logged as its one line and ends the process with exit code 1
    (SystemExit, so the callers' `finally` clauses still retire the models)."""
    try:
        try:
            import uvloop
        except ImportError:
            asyncio.run(main)
        else:
            uvloop.run(main)
    except ListenError as exc:
        log.error("%s", exc)
        raise SystemExit(1) from None
    finally:
        _shutdown_done.set()  # the loop and its threads are done: the exit watchdog stands down


async def serve_until_signal(server: Server, *, http: tuple[HttpFrontend, Endpoint] | None,
                             grpc: Endpoint | None, metrics: Endpoint | None, exit_timeout: float,
                             grpc_max_message_bytes: int | None = None,
                             grpc_restricted: Mapping[str, tuple[str, str]] | None = None,
                             http_limits: HttpLimits | None = None,
                             http_name: str = "HTTPService",
                             ready_message: str = "ready", started: float | None = None,
                             metrics_collectors: Sequence[Any] = (), drain_delay: float | None = None,
                             close_server: bool = True, http_tls: TlsSettings | None = None,
                             grpc_tls: TlsSettings | None = None,
                             management: tuple[HttpFrontend, Endpoint] | None = None,
                             http_workers: int = 1) -> None:
    """Start the front doors that are given, log `ready_message`, and serve until SIGINT or SIGTERM; then shut down
    within `exit_timeout` seconds (see the module docstring).

    `drain_delay`: seconds the front doors keep accepting after the signal while the server reports not ready (None:
    the INFERD_DRAIN_DELAY_SECS environment variable, else 0); part of `exit_timeout`. `close_server`: retire the
    models (`server.close`) before returning, terminating instance processes still busy at the deadline.

    `metrics_collectors`: Prometheus collectors served on the metrics endpoint next to the model metrics;
    `grpc_restricted`: API group -> (metadata key, value) that gRPC calls of the group must carry (Triton's
    `--grpc-restricted-protocol`; the HTTP frontend carries its own). `http_tls` / `grpc_tls`: serve that door over
    TLS only (None: plain); the metrics endpoint stays plain HTTP, as in Triton. `management`: TorchServe's
    management API, a second HTTP door (with the HTTP limits and TLS) on its own port. `http_workers`: with 2 or
    more, that many worker processes serve the HTTP port instead of this one (`frontends/workers.py`)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    gateway = server.gateway
    if gateway is not None:  # SIGHUP re-reads the auth file, as daemons do with their configuration
        loop.add_signal_handler(signal.SIGHUP, gateway.reload)

    check_ports({"http": http[1] if http else None, "grpc": grpc, "metrics": metrics,
                 "torchserve-management": management[1] if management else None})
    grpc_frontend: GrpcFrontend | None = None
    grpc_port = grpc.port if grpc is not None else 0  # the public gRPC port, once bound
    # With worker processes the workers serve the gRPC port too; this process's gRPC server answers what they
    # forward (every call but ModelInfer's fast path) on a private Unix socket (frontends/grpc/worker.py).
    private_grpc = tempfile.mkdtemp(prefix="inferd-grpc-") if grpc is not None and http and http_workers > 1 else None
    metrics_server: Any = None
    http_server: HttpServer | WorkerPool | None = None
    management_server: HttpServer | None = None
    try:
        if grpc is not None and private_grpc is not None:
            grpc_frontend = _start_grpc(server, Endpoint(f"unix:{private_grpc}/grpc.sock", 0),
                                        grpc_max_message_bytes, grpc_restricted, None, private=True)
        elif grpc is not None:
            grpc_frontend = _start_grpc(server, grpc, grpc_max_message_bytes, grpc_restricted, grpc_tls)
            grpc_port = grpc_frontend.port
        if metrics is not None:
            from ..observability.metrics import start_metrics_server

            metrics_server = _bind("metrics", metrics, lambda: start_metrics_server(
                server.model_statistics, metrics.address, metrics.port, metrics_collectors))
            # The bound port (not the asked one): with port 0 the system picks it; this line is how callers learn it.
            log.info("started Metrics Service at %s:%d", metrics.address, metrics_server.server_address[1])
        if http is not None:
            frontend, endpoint = http
            if http_workers > 1:
                from .workers import WorkerPool

                grpc_workers = None
                if grpc is not None and private_grpc is not None:
                    from .grpc.frontend import DEFAULT_MAX_MESSAGE_BYTES
                    from .grpc.worker import GrpcWorkerConfig

                    fast = server.gateway is None and not grpc_restricted and server.host_routing is None
                    grpc_workers = GrpcWorkerConfig(grpc.address, grpc.port, f"unix:{private_grpc}/grpc.sock",
                                                    grpc_max_message_bytes or DEFAULT_MAX_MESSAGE_BYTES, grpc_tls,
                                                    fast)
                http_server = WorkerPool(frontend, endpoint.address, endpoint.port, http_workers,
                                         limits=http_limits or HttpLimits(), tls=http_tls, grpc=grpc_workers)
            else:
                http_server = HttpServer(frontend, endpoint.address, endpoint.port, limits=http_limits, tls=http_tls)
            try:
                await http_server.start()
            except OSError as exc:
                raise ListenError.of("http", endpoint, exc) from None
            _log_tls(http_name, http_tls)
            log.info("started %s at %s:%d", http_name, endpoint.address, http_server.port)
            pool_grpc_port = getattr(http_server, "grpc_port", None)
            if grpc is not None and pool_grpc_port is not None:
                grpc_port = pool_grpc_port
                _log_tls("GRPCInferenceService", grpc_tls)
                log.info("started GRPCInferenceService at %s:%d", grpc.address, grpc_port)
        if management is not None:
            management_server = await _start_management(server, management, http_limits, http_tls)
    except ListenError:  # another process took a port since check_ports: what did start stops again
        if http_server is not None:
            await http_server.stop(0)
        if grpc_frontend is not None:
            grpc_frontend.stop(0)
        if metrics_server is not None:
            metrics_server.shutdown()
            metrics_server.server_close()
        if private_grpc is not None:
            shutil.rmtree(private_grpc, ignore_errors=True)
        raise
    # With the bound ports: with port 0 the system picks them.
    _warn_if_repository_open(
        server, (http[0], Endpoint(http[1].address, http_server.port)) if http and http_server else None,
        Endpoint(grpc.address, grpc_port) if grpc and grpc_frontend else None, grpc_restricted or {})
    if started is not None:
        log.info("%s in %.2f s", ready_message, time.perf_counter() - started)
    else:
        log.info("%s", ready_message)
    await stop.wait()
    deadline = time.monotonic() + exit_timeout
    _start_exit_watchdog(deadline + EXIT_MARGIN_S, server)
    server.drain()  # not ready, first
    delay = min(_drain_delay(drain_delay), exit_timeout)
    if delay > 0:
        log.info("not ready; still accepting for %.1f s (drain delay)", delay)
        await asyncio.sleep(delay)
    left = max(0.0, deadline - time.monotonic())
    log.info("shutting down: no new requests; waiting up to %.0f s for in-flight ones", left)
    stops = []
    if http_server is not None and private_grpc is None:
        stops.append(http_server.stop(left))
    if management_server is not None:
        stops.append(management_server.stop(left))
    if grpc_frontend is not None:
        grpc_stop = asyncio.to_thread(grpc_frontend.stop, left)
        if private_grpc is not None and http_server is not None:  # the workers forward to it until they stop
            stops.append(_in_turn(http_server.stop(left), grpc_stop))
        else:
            stops.append(grpc_stop)
    elif http_server is not None and private_grpc is not None:
        stops.append(http_server.stop(left))
    await asyncio.gather(*stops)
    if private_grpc is not None:
        shutil.rmtree(private_grpc, ignore_errors=True)
    if metrics_server is not None:
        metrics_server.shutdown()
    if close_server:
        await asyncio.to_thread(_close_server, server, deadline)
    log.info("stopped")


async def _in_turn(*steps: Coroutine[Any, Any, Any]) -> None:
    for step in steps:
        await step


def _start_grpc(server: Server, grpc: Endpoint, max_message_bytes: int | None,
                restricted: Mapping[str, tuple[str, str]] | None, tls: TlsSettings | None, *,
                private: bool = False) -> GrpcFrontend:
    """The gRPC door, started (bound) and logged with its bound port (`private`: the workers' Unix socket)."""
    from .grpc import GrpcFrontend

    options: dict[str, Any] = {}
    if max_message_bytes is not None:
        options["max_message_bytes"] = max_message_bytes
    frontend = GrpcFrontend(server, grpc.address, grpc.port, restricted=restricted, tls=tls, **options)
    _bind("grpc", grpc, frontend.start)
    if private:
        log.info("gRPC served by the worker processes; this process answers what they forward at %s", grpc.address)
        return frontend
    _log_tls("GRPCInferenceService", tls)
    log.info("started GRPCInferenceService at %s:%d", grpc.address, frontend.port)
    return frontend


async def _start_management(server: Server, door: tuple[HttpFrontend, Endpoint], limits: HttpLimits | None,
                            tls: TlsSettings | None) -> HttpServer:
    """TorchServe's management door, started and logged with its bound port; a warning when it is open to the
    network with nothing asked of callers (it loads models, and archives are code)."""
    frontend, endpoint = door
    management = HttpServer(frontend, endpoint.address, endpoint.port, limits=limits, tls=tls)
    try:
        await management.start()
    except OSError as exc:
        raise ListenError.of("torchserve-management", endpoint, exc) from None
    _log_tls("TorchServe Management Service", tls)
    log.info("started TorchServe Management Service at %s:%d", endpoint.address, management.port)
    if (server.model_control_mode == "explicit" and server.gateway is None and not is_loopback(endpoint.address)
            and "model-repository" not in frontend.restricted):
        log.warning("TorchServe's management API (model register / unregister) is open to the network on %s:%d "
                    "with no restriction: restrict it with --http-restricted-api=model-repository:KEY=VALUE or "
                    "--auth-config, or listen on 127.0.0.1 (--torchserve-management-address)", endpoint.address,
                    management.port)
    return management


def _log_tls(name: str, tls: TlsSettings | None) -> None:
    """One line saying a door serves TLS (before its `started ... at` line, which scripts parse as it is)."""
    if tls is not None:
        log.info("%s serves TLS only (certificate %s%s)", name, tls.certfile,
                 f"; client certificates required, signed by {tls.ca_certs}" if tls.ca_certs else "")


def _drain_delay(given: float | None) -> float:
    if given is not None:
        return max(0.0, given)
    text = os.environ.get(DRAIN_DELAY_ENV, "").strip()
    if not text:
        return 0.0
    try:
        return max(0.0, float(text))
    except ValueError:
        log.warning("%s=%r is not a number of seconds; no drain delay", DRAIN_DELAY_ENV, text)
        return 0.0


def _close_server(server: Server, deadline: float) -> None:
    """`server.close` with what is left until `deadline`; past it, end the instance processes still busy (a hung
    model) so the retirement can finish, and give up waiting on it CLOSE_GRACE_S later."""
    closer = threading.Thread(target=server.close, args=(max(0.0, deadline - time.monotonic()),),
                              name="inferd-close", daemon=True)
    closer.start()
    closer.join(max(0.0, deadline - time.monotonic()))
    if closer.is_alive():
        log.warning("exit timeout reached with models still busy; terminating their instance processes")
        server.terminate_instances(grace=1.0)
        closer.join(CLOSE_GRACE_S)
        if closer.is_alive():
            log.warning("models still retiring %.0f s past the exit timeout; exiting without them", CLOSE_GRACE_S)


def _start_exit_watchdog(at: float, server: Server) -> None:
    """A last resort: a daemon thread that ends the process at `at` (time.monotonic) if it is still running then,
    whatever holds it (a thread no timeout reaches)."""
    def watch() -> None:
        log.error("still running %.0f s past the exit timeout; terminating instance processes and exiting now",
                  EXIT_MARGIN_S)
        try:
            server.terminate_instances(grace=0.5)
        finally:
            for handler in logging.getLogger().handlers + log.handlers:
                with contextlib.suppress(Exception):  # exiting: a handler that cannot flush must not stop it
                    handler.flush()
            os._exit(EXIT_OVERRUN_CODE)

    def watch_or_stand_down() -> None:
        if not _shutdown_done.wait(max(0.0, at - time.monotonic())):
            watch()

    _shutdown_done.clear()
    threading.Thread(target=watch_or_stand_down, name="inferd-exit-watchdog", daemon=True).start()


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach a listener bound to `host` (a name other than localhost: no)."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _warn_if_repository_open(server: Server, http: tuple[HttpFrontend, Endpoint] | None, grpc: Endpoint | None,
                             grpc_restricted: Mapping[str, tuple[str, str]]) -> None:
    """One warning line when model loads (explicit mode) can come from the network with no restriction."""
    if server.model_control_mode != "explicit":
        return  # load / unload are refused in the other modes
    open_doors = []
    if http is not None and "model-repository" not in http[0].restricted and not is_loopback(http[1].address):
        open_doors.append(f"HTTP at {http[1].address}:{http[1].port}")
    if grpc is not None and "model-repository" not in grpc_restricted and not is_loopback(grpc.address):
        open_doors.append(f"gRPC at {grpc.address}:{grpc.port}")
    if open_doors:
        log.warning("the model repository API (model load / unload) is open to the network on %s with no restriction: "
                    "restrict it with --http-restricted-api=model-repository:KEY=VALUE and "
                    "--grpc-restricted-protocol=model-repository:KEY=VALUE, or listen on 127.0.0.1 "
                    "(--http-address, --grpc-address)", " and ".join(open_doors))
