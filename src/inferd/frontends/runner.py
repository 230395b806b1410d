"""Running a Server's front doors until SIGINT / SIGTERM: what `inferd serve` and `inferd microservice` share.

The HTTP server runs on the event loop, the gRPC server on its own thread and loop, the metrics endpoint on its
own HTTP thread. On a signal: stop accepting, let requests in flight finish (up to `exit_timeout` seconds), stop.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import signal
import time
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..server import Server
from .http.app import HttpFrontend
from .http.server import HttpLimits

log = logging.getLogger("inferd")


@dataclass
class Endpoint:
    """Where one front door listens."""

    address: str
    port: int


def run_event_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run `main` on uvloop where it is installed, else on asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


async def serve_until_signal(server: Server, *, http: tuple[HttpFrontend, Endpoint] | None,
                             grpc: Endpoint | None, metrics: Endpoint | None, exit_timeout: float,
                             grpc_max_message_bytes: int | None = None,
                             grpc_restricted: Mapping[str, tuple[str, str]] | None = None,
                             http_limits: HttpLimits | None = None,
                             http_name: str = "HTTPService",
                             ready_message: str = "ready", started: float | None = None,
                             metrics_collectors: Sequence[Any] = ()) -> None:
    """Start the front doors that are given, log `ready_message`, and serve until SIGINT or SIGTERM.

    `metrics_collectors`: Prometheus collectors served on the metrics endpoint next to the model metrics;
    `grpc_restricted`: API group -> (metadata key, value) that gRPC calls of the group must carry (Triton's
    `--grpc-restricted-protocol`; the HTTP frontend carries its own)."""
    from .http.server import HttpServer

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    grpc_frontend = None
    if grpc is not None:
        from .grpc import GrpcFrontend

        options: dict[str, Any] = {}
        if grpc_max_message_bytes is not None:
            options["max_message_bytes"] = grpc_max_message_bytes
        grpc_frontend = GrpcFrontend(server, grpc.address, grpc.port, restricted=grpc_restricted, **options)
        grpc_frontend.start()
        log.info("started GRPCInferenceService at %s:%d", grpc.address, grpc_frontend.port)
    metrics_server = None
    if metrics is not None:
        from ..observability.metrics import start_metrics_server

        metrics_server = start_metrics_server(server.model_statistics, metrics.address, metrics.port,
                                              metrics_collectors)
        # The bound port (not the asked one): with port 0 the system picks it, and this line is how callers learn it.
        log.info("started Metrics Service at %s:%d", metrics.address, metrics_server.server_address[1])
    http_server = None
    if http is not None:
        frontend, endpoint = http
        http_server = HttpServer(frontend, endpoint.address, endpoint.port, limits=http_limits)
        await http_server.start()
        log.info("started %s at %s:%d", http_name, endpoint.address, http_server.port)
    # With the bound ports: with port 0 the system picks them.
    _warn_if_repository_open(
        server, (http[0], Endpoint(http[1].address, http_server.port)) if http and http_server else None,
        Endpoint(grpc.address, grpc_frontend.port) if grpc and grpc_frontend else None, grpc_restricted or {})
    if started is not None:
        log.info("%s in %.2f s", ready_message, time.perf_counter() - started)
    else:
        log.info("%s", ready_message)
    await stop.wait()
    log.info("shutting down: no new requests; waiting up to %.0f s for in-flight ones", exit_timeout)
    stops = []
    if http_server is not None:
        stops.append(http_server.stop(exit_timeout))
    if grpc_frontend is not None:
        stops.append(asyncio.to_thread(grpc_frontend.stop, exit_timeout))
    await asyncio.gather(*stops)
    if metrics_server is not None:
        metrics_server.shutdown()
    log.info("stopped")


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
