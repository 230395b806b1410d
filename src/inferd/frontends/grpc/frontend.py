"""The gRPC front door: a `grpc.aio` server on its own thread and event loop (uvloop where installed).

The HTTP frontend owns the main loop; giving gRPC a loop of its own keeps the two protocols from stalling each
other. The servicer calls the core directly on this loop (no hop to the main loop): a cheap model runs inline here,
as it does on the HTTP loop, and slower ones on their instance threads, which settle the call's future on this loop.

grpcio's sync server (`grpc.server` and a thread pool) was measured as the alternative (issue 18, P3,
benchmarks/bench_grpc.py; each thread ran the same coroutines on a loop of its own): with 4 handler threads a mlp call
cost 4-10 % less CPU than here, within the shared box's noise, but the calls in flight were capped at 4 (an open
stream holds a thread, and a dynamic batcher gets batches of 4 at most); with 64 threads their contention for the GIL
made each call cost 40 % more. So grpc.aio stays.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Mapping

import grpc
from grpc_health.v1 import health_pb2_grpc

from ...server import Server
from ..tls import TlsSettings
from .health import HealthServicer
from .interceptors import RPC_API, AuthInterceptor, RestrictedApiInterceptor
from .registration import add_inference_servicer
from .servicer import InferenceServicer

log = logging.getLogger("inferd.grpc")

__all__ = ["DEFAULT_MAX_MESSAGE_BYTES", "MAX_PENDING_RPCS", "RPC_API", "GrpcFrontend", "RestrictedApiInterceptor"]

# Triton's own limit (and gRPC's ceiling): any request Triton takes, this server takes too.
DEFAULT_MAX_MESSAGE_BYTES = 2**31 - 1
_START_TIMEOUT_S = 30.0
# Calls the gRPC core holds for the server before grpc.aio asks for them (see _serve); past this, refused.
MAX_PENDING_RPCS = 65536


def _credentials(tls: TlsSettings) -> grpc.ServerCredentials:
    """gRPC's server credentials for `tls`: with CA certificates, clients must present a certificate signed by
    them (Triton's --grpc-use-ssl-mutual), else none is asked for."""
    certificate, key, ca = tls.pem()
    return grpc.ssl_server_credentials([(key, certificate)], root_certificates=ca, require_client_auth=ca is not None)


def _address(host: str, port: int) -> str:
    if host.startswith("unix:"):  # a Unix socket (the worker processes' way to the main process)
        return host
    if ":" in host and not host.startswith("["):  # a bare IPv6 address
        host = f"[{host}]"
    return f"{host}:{port}"


def _new_loop() -> asyncio.AbstractEventLoop:
    """uvloop where it is installed (as the HTTP door's loop), else asyncio's own.

    grpc.aio runs on any asyncio loop: grpc's own thread polls the completion queue and wakes the loop through a
    socket. What the loop itself costs per call (its ready callbacks, the selector, the wake-up socket's reads) is
    C on uvloop and Python on asyncio's loop: with uvloop the server's CPU per mlp call fell by 9-14 % at c=8 and 32
    in one A/B and by 2-12 % at c=1, 8, 32 in a later run beside the previous commit (benchmarks/bench_grpc.py,
    medians of 3 rounds on the shared 2-core box, whose load moves single rates by a third)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.SelectorEventLoop()
    return uvloop.new_event_loop()


class GrpcFrontend:
    """Serves `inference.GRPCInferenceService` and `grpc.health.v1.Health` for a `Server`.

    >>> frontend = GrpcFrontend(server, "127.0.0.1", 0)
    >>> frontend.start()           # returns once the port is bound; frontend.port is the bound port
    >>> frontend.stop(grace=5.0)   # in-flight RPCs get up to 5 s to finish
    """

    def __init__(
        self,
        server: Server,
        host: str = "0.0.0.0",
        port: int = 8001,
        *,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        stream_window: int = 256,
        restricted: Mapping[str, tuple[str, str]] | None = None,
        tls: TlsSettings | None = None,
    ) -> None:
        if stream_window < 1:
            raise ValueError("stream_window must be at least 1")
        if not 0 < max_message_bytes <= DEFAULT_MAX_MESSAGE_BYTES:
            raise ValueError(f"max_message_bytes must be between 1 and {DEFAULT_MAX_MESSAGE_BYTES}")
        self.server = server
        self.host = host
        self.port = port
        self.max_message_bytes = max_message_bytes
        self.stream_window = stream_window
        # API group -> (key, value) that calls of the group must carry (Triton's --grpc-restricted-protocol).
        self.restricted = dict(restricted or {})
        unknown = set(self.restricted) - set(RPC_API.values())
        if unknown:
            raise ValueError(f"unknown restricted protocol {', '.join(sorted(unknown))}")
        # TLS with these files (Triton's --grpc-use-ssl; with ca_certs, --grpc-use-ssl-mutual); None: plain text.
        self.tls = tls
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_requested: asyncio.Event | None = None
        self._grace: float | None = None

    @property
    def address(self) -> str:
        return _address(self.host, self.port)

    def start(self) -> None:
        """Start serving; returns once the port is bound. Raises OSError when it cannot be bound."""
        if self._thread is not None:
            raise RuntimeError("the gRPC frontend is already started")
        bound: concurrent.futures.Future[int] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._run, args=(bound,), name="inferd-grpc", daemon=True)
        self._thread.start()
        try:
            self.port = bound.result(timeout=_START_TIMEOUT_S)
        except BaseException:
            self._thread.join(timeout=_START_TIMEOUT_S)
            self._thread = None
            raise
        log.info("gRPC frontend listening on %s", self.address)

    def stop(self, grace: float = 5.0) -> None:
        """Stop accepting RPCs, give those in flight up to `grace` seconds, then end the thread."""
        thread, loop, event = self._thread, self._loop, self._stop_requested
        if thread is None:
            return
        if loop is not None and event is not None and not loop.is_closed():
            self._grace = grace
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # the loop closed in between: the thread is ending anyway
                pass
        thread.join(timeout=grace + _START_TIMEOUT_S)
        if thread.is_alive():
            log.warning("gRPC frontend thread did not end within %.1f s", grace + _START_TIMEOUT_S)
        self._thread = None

    def _run(self, bound: concurrent.futures.Future[int]) -> None:
        loop = _new_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        try:
            loop.run_until_complete(self._serve(bound))
        except BaseException as exc:
            if not bound.done():
                bound.set_exception(exc)
            else:
                log.exception("gRPC frontend stopped on an error")
        finally:
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()

    async def _serve(self, bound: concurrent.futures.Future[int]) -> None:
        self._stop_requested = asyncio.Event()
        # The interceptor only when something is restricted: an unrestricted server pays nothing per call.
        # Interceptors only for what is on: an open, unrestricted server pays nothing per call.
        interceptors: list[grpc.aio.ServerInterceptor] = []
        if self.restricted:
            interceptors.append(RestrictedApiInterceptor(self.restricted))
        if self.server.gateway is not None:
            interceptors.append(AuthInterceptor(self.server.gateway))
        server = grpc.aio.server(interceptors=interceptors, options=[
            ("grpc.max_send_message_length", self.max_message_bytes),
            ("grpc.max_receive_message_length", self.max_message_bytes),
            # Without this, Linux lets a second server bind the same port silently and steal half the traffic.
            ("grpc.so_reuseport", 0),
            # grpc.aio takes calls from the core one at a time, so a burst waits in the core's queue of calls the
            # application has not yet asked for. Over its soft limit (1,000 by default) the core cancels queued
            # calls at random (CANCELLED, no details, never seen by the servicer), every one at the hard limit
            # (3,000): 2,000 concurrent unary calls on one channel lost ~10 % of them (issue 17, finding 9).
            ("grpc.server.max_pending_requests", MAX_PENDING_RPCS),
            ("grpc.server.max_pending_requests_hard_limit", MAX_PENDING_RPCS),
        ])
        # Fresh servicers for each run, so a restarted frontend carries no state (health's shutdown flag) over.
        health = HealthServicer(self.server)
        add_inference_servicer(InferenceServicer(self.server, stream_window=self.stream_window), server)
        health_pb2_grpc.add_HealthServicer_to_server(health, server)
        address = self.address
        try:
            if self.tls is None:
                port = server.add_insecure_port(address)
            else:
                port = server.add_secure_port(address, _credentials(self.tls))
        except RuntimeError as exc:
            raise OSError(f"gRPC frontend cannot bind {address}: the port is in use or the address is not "
                          f"available ({exc})") from None
        if port == 0:  # older grpcio reports a failed bind this way
            raise OSError(f"gRPC frontend cannot bind {address}: the port is in use or the address is not available")
        await server.start()
        bound.set_result(port)
        await self._stop_requested.wait()
        health.enter_graceful_shutdown()
        await server.stop(self._grace)
