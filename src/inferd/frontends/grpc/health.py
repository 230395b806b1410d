"""The standard `grpc.health.v1.Health` service, answered from the core's readiness.

Load balancers and Kubernetes gRPC probes speak this protocol, not Triton's. Statuses are computed on each call
rather than pushed into a registry (as grpc's stock servicer wants), so they can never go stale:

- service "" or "inference.GRPCInferenceService": SERVING when the server is ready;
- a model name: SERVING when that model has a ready version, NOT_SERVING while it has none;
- any other name: NOT_FOUND for Check, SERVICE_UNKNOWN for Watch, as the health protocol asks.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from grpc_health.v1 import health_pb2, health_pb2_grpc

from ...server import Server
from ...types import InferError
from .status import status_on_error

__all__ = ["HealthServicer"]

_SERVER_SERVICES = ("", "inference.GRPCInferenceService")
_Status = health_pb2.HealthCheckResponse.ServingStatus


class HealthServicer(health_pb2_grpc.HealthServicer):
    """Check and Watch; Watch re-evaluates every `watch_interval` seconds and sends only changes."""

    def __init__(self, server: Server, *, watch_interval: float = 1.0) -> None:
        self._server = server
        self._watch_interval = watch_interval
        self._stopping: asyncio.Event | None = None

    def _stop_event(self) -> asyncio.Event:
        # Made on first use, so it belongs to the frontend's loop rather than whichever thread built the servicer.
        if self._stopping is None:
            self._stopping = asyncio.Event()
        return self._stopping

    def enter_graceful_shutdown(self) -> None:
        """Report NOT_SERVING from now on and end Watch streams, so they do not hold the server's shutdown."""
        self._stop_event().set()

    def _status(self, service: str) -> int | None:
        """The service's status, or None for a name that is neither the server nor a known model."""
        if self._stop_event().is_set():
            return int(_Status.NOT_SERVING)
        if service in _SERVER_SERVICES:
            ready = self._server.ready()
        elif self._server.model_ready(service):
            ready = True
        elif self._server.version_states(service) is not None:
            ready = False
        else:
            return None
        return int(_Status.SERVING if ready else _Status.NOT_SERVING)

    async def Check(self, request: Any, context: Any) -> Any:
        async with status_on_error(context, "Health.Check"):
            status = self._status(request.service)
            if status is None:
                raise InferError.not_found(f"unknown service '{request.service}'")
            return health_pb2.HealthCheckResponse(status=status)

    async def Watch(self, request: Any, context: Any) -> AsyncIterator[Any]:
        stopping = self._stop_event()
        last: int | None = None
        while True:
            status = self._status(request.service)
            if status is None:
                status = int(_Status.SERVICE_UNKNOWN)
            if status != last:
                yield health_pb2.HealthCheckResponse(status=status)
                last = status
            if stopping.is_set():
                return
            try:
                await asyncio.wait_for(stopping.wait(), self._watch_interval)
            except asyncio.TimeoutError:
                pass
