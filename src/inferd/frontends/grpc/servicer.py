"""`inference.GRPCInferenceService`: Triton's V2 gRPC API over the core `Server`.

Each RPC only translates messages (see `codec`) and calls the core; errors become gRPC status codes through
`ErrorKind.grpc_code_name` alone.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from google.protobuf import json_format

from ...gateway.routing import AUTHORITY
from ...pipeline import RequestContext
from ...protos import service_pb2 as pb
from ...protos import service_pb2_grpc
from ...server import Server
from ...types import VARIANT_HEADER as VARIANT_METADATA
from ...types import InferenceRequest, InferError, describe_error, public_error_text
from .codec import (
    cuda_shared_memory_status_response,
    decode_infer_request,
    encode_infer_response,
    load_parameters,
    model_metadata_response,
    repository_index_response,
    server_metadata_response,
    system_shared_memory_status_response,
)
from .settings import log_setting_values, log_settings_response, trace_setting_response, trace_setting_values
from .status import status_on_error

log = logging.getLogger("inferd.grpc")

__all__ = ["InferenceServicer"]

# grpc.aio.ServicerContext (grpc ships without types)
Context = Any

_INFER = "/inference.GRPCInferenceService/ModelInfer"
_STREAM_INFER = "/inference.GRPCInferenceService/ModelStreamInfer"


def _peer(peer: str) -> str:
    """gRPC's peer ("ipv4:127.0.0.1:5000", "ipv6:[::1]:5000") as an address ("127.0.0.1:5000")."""
    kind, colon, address = peer.partition(":")
    return address if colon and kind in ("ipv4", "ipv6") else peer


def _with_authority(context: Context) -> Callable[[], tuple[tuple[str, Any], ...]]:
    """The call's metadata and its authority as `:authority` (gateway/routing.py's RouteStage reads it).

    grpcio's server API does not give the `:authority` pseudo-header to Python yet (grpc/grpc issue 38906; the
    accessor `experimental_authority` is used where the installed grpcio has it). Until then the authority is the
    `host` metadata entry, as HTTP/1.1 gateways and gRPC-Web proxies forward it (gRPC-Java reads Host the same way
    when a request has no :authority)."""

    def metadata() -> tuple[tuple[str, Any], ...]:
        given = tuple(context.invocation_metadata() or ())
        accessor = getattr(context, "experimental_authority", None)
        authority = accessor() if callable(accessor) else None
        if not authority:
            authority = next((value for key, value in given if key == "host"), None)
        return (*given, (AUTHORITY, authority)) if authority else given

    return metadata


class InferenceServicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    """The V2 inference service. Runs on the gRPC frontend's own event loop.

    `stream_window` bounds how many requests of one ModelStreamInfer stream run at once: past it the servicer
    stops reading, and HTTP/2 flow control holds the client back instead of the server's memory filling up.
    """

    def __init__(self, server: Server, *, stream_window: int = 256) -> None:
        if stream_window < 1:
            raise ValueError("stream_window must be at least 1")
        self._server = server
        self._stream_window = stream_window

    # ---- shared memory (regions live in the core; CUDA registration is refused there) ----

    async def SystemSharedMemoryStatus(self, request: pb.SystemSharedMemoryStatusRequest,
                                       context: Context) -> pb.SystemSharedMemoryStatusResponse:
        async with status_on_error(context, "SystemSharedMemoryStatus"):
            return system_shared_memory_status_response(self._server.shared_memory.status(request.name))

    async def SystemSharedMemoryRegister(self, request: pb.SystemSharedMemoryRegisterRequest,
                                         context: Context) -> pb.SystemSharedMemoryRegisterResponse:
        async with status_on_error(context, "SystemSharedMemoryRegister"):
            self._server.shared_memory.register(request.name, request.key, request.offset, request.byte_size)
            return pb.SystemSharedMemoryRegisterResponse()

    async def SystemSharedMemoryUnregister(self, request: pb.SystemSharedMemoryUnregisterRequest,
                                           context: Context) -> pb.SystemSharedMemoryUnregisterResponse:
        async with status_on_error(context, "SystemSharedMemoryUnregister"):
            self._server.shared_memory.unregister(request.name)
            return pb.SystemSharedMemoryUnregisterResponse()

    async def CudaSharedMemoryStatus(self, request: pb.CudaSharedMemoryStatusRequest,
                                     context: Context) -> pb.CudaSharedMemoryStatusResponse:
        async with status_on_error(context, "CudaSharedMemoryStatus"):
            return cuda_shared_memory_status_response(self._server.cuda_shared_memory.status(request.name))

    async def CudaSharedMemoryRegister(self, request: pb.CudaSharedMemoryRegisterRequest,
                                       context: Context) -> pb.CudaSharedMemoryRegisterResponse:
        async with status_on_error(context, "CudaSharedMemoryRegister"):
            self._server.cuda_shared_memory.register(request.name, request.raw_handle, request.device_id,
                                                     request.byte_size)
            return pb.CudaSharedMemoryRegisterResponse()

    async def CudaSharedMemoryUnregister(self, request: pb.CudaSharedMemoryUnregisterRequest,
                                         context: Context) -> pb.CudaSharedMemoryUnregisterResponse:
        async with status_on_error(context, "CudaSharedMemoryUnregister"):
            self._server.cuda_shared_memory.unregister(request.name)
            return pb.CudaSharedMemoryUnregisterResponse()

    # ---- health and metadata ----

    async def ServerLive(self, request: pb.ServerLiveRequest, context: Context) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self._server.live())

    async def ServerReady(self, request: pb.ServerReadyRequest, context: Context) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self._server.ready())

    async def ModelReady(self, request: pb.ModelReadyRequest, context: Context) -> pb.ModelReadyResponse:
        # An unknown model is simply not ready (Triton answers the same way, without an error).
        return pb.ModelReadyResponse(ready=self._server.model_ready(request.name, request.version))

    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: Context) -> pb.ServerMetadataResponse:
        async with status_on_error(context, "ServerMetadata"):
            return server_metadata_response(self._server.metadata())

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Context) -> pb.ModelMetadataResponse:
        async with status_on_error(context, "ModelMetadata"):
            return model_metadata_response(self._server.model_metadata(request.name, request.version))

    async def ModelConfig(self, request: pb.ModelConfigRequest, context: Context) -> pb.ModelConfigResponse:
        async with status_on_error(context, "ModelConfig"):
            return pb.ModelConfigResponse(config=self._server.model_config(request.name, request.version))

    async def ModelStatistics(self, request: pb.ModelStatisticsRequest, context: Context) -> pb.ModelStatisticsResponse:
        async with status_on_error(context, "ModelStatistics"):
            stats = self._server.statistics(request.name, request.version)
            return json_format.ParseDict(stats, pb.ModelStatisticsResponse(), ignore_unknown_fields=True)

    # ---- inference ----

    async def ModelInfer(self, request: pb.ModelInferRequest, context: Context) -> pb.ModelInferResponse:
        async with status_on_error(context, "ModelInfer"):
            # No local holds the decoded request: grpc keeps an aborted call's frame in a reference cycle, and its
            # tensors (views of client shared memory among them) must go when the call ends, not at the next GC.
            caller = self._caller(context, _INFER)
            response = await self._server.infer_request(self._audited_decode(request, caller), caller)
            if response.variant:  # a split model: which variant served it
                context.set_trailing_metadata(((VARIANT_METADATA, response.variant),))
            return encode_infer_response(response)

    def _caller(self, context: Context, method: str) -> RequestContext:
        """Where a call came from; its peer's address only when the gateway audits calls, its authority only when
        the server routes by host."""
        peer = _peer(context.peer()) if self._server.gateway is not None else ""
        metadata = context.invocation_metadata
        if self._server.host_routing is not None:
            metadata = _with_authority(context)
        return RequestContext("v2-grpc", metadata=metadata, peer=peer, endpoint=method)

    def _audited_decode(self, request: pb.ModelInferRequest, caller: RequestContext, *,
                        arrivals: bool = True) -> InferenceRequest:
        """The decoded request (reported to the arrival hints unless `arrivals` is False); one that cannot be decoded
        is answered before the pipeline, so it is audited here."""
        started = time.perf_counter()
        try:
            return self._decode(request) if arrivals else decode_infer_request(request, self._server.limits)
        except InferError as exc:
            gateway = self._server.gateway
            if gateway is not None:
                try:
                    tenant: str | None = gateway.identify(caller.header).name
                except InferError:
                    tenant = None
                gateway.refused("v2-grpc", caller.endpoint, request.model_name, exc,
                                request.id or caller.header("x-request-id"), caller.peer, tenant=tenant,
                                version=request.model_version, latency_ms=(time.perf_counter() - started) * 1000)
            raise

    def _decode(self, request: pb.ModelInferRequest) -> InferenceRequest:
        """The core's request, reported to the batchers' arrival hints as read and then started."""
        server = self._server
        loop = asyncio.get_running_loop()
        server.arrivals.arrived(loop)
        try:
            return decode_infer_request(request, server.limits)
        finally:
            server.arrivals.started(loop)

    async def ModelStreamInfer(self, request_iterator: AsyncIterator[pb.ModelInferRequest],
                               context: Context) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Answer each request of the stream as it completes; a failed request is answered with error_message.

        Requests enter the core in the order they arrive (each task is started in order and reaches the core
        before its first await); answers go back in the order they finish, matched by request id, as in Triton.
        """
        answers: asyncio.Queue[pb.ModelStreamInferResponse | None] = asyncio.Queue()  # None: the end
        slots = asyncio.Semaphore(self._stream_window)
        running: set[asyncio.Task[None]] = set()

        caller = self._caller(context, _STREAM_INFER)

        async def answer(request: pb.ModelInferRequest) -> None:
            try:
                answers.put_nowait(await self._stream_answer(request, caller))
            finally:
                slots.release()

        async def read() -> None:
            try:
                async for request in request_iterator:
                    await slots.acquire()
                    task = asyncio.ensure_future(answer(request))
                    running.add(task)
                    task.add_done_callback(running.discard)
            except Exception as exc:  # the client's side of the stream broke; finish what was started
                log.debug("ModelStreamInfer: reading the stream failed: %s", exc)
            finally:
                if running:
                    await asyncio.gather(*running, return_exceptions=True)
                answers.put_nowait(None)

        reader = asyncio.ensure_future(read())
        try:
            while (item := await answers.get()) is not None:
                yield item
        finally:
            reader.cancel()
            for task in list(running):
                task.cancel()

    async def _stream_answer(self, request: pb.ModelInferRequest,
                             caller: RequestContext) -> pb.ModelStreamInferResponse:
        try:
            response = await self._server.infer_request(self._audited_decode(request, caller, arrivals=False),
                                                        caller)
            return pb.ModelStreamInferResponse(infer_response=encode_infer_response(response))
        except InferError as err:
            message = err.message
        except Exception as exc:
            log.exception("ModelStreamInfer request failed")
            message = f"ModelStreamInfer failed: {public_error_text(describe_error(exc))}"
        # The id tells the client which request failed.
        return pb.ModelStreamInferResponse(error_message=message,
                                           infer_response=pb.ModelInferResponse(id=request.id))

    # ---- trace and log settings ----

    async def TraceSetting(self, request: pb.TraceSettingRequest, context: Context) -> pb.TraceSettingResponse:
        """No settings in the request: read them; otherwise change the given ones (globally or for one model)."""
        async with status_on_error(context, "TraceSetting"):
            values = trace_setting_values(request)
            if values:
                settings = self._server.update_trace_settings(values, request.model_name)
            else:
                settings = self._server.trace_settings(request.model_name)
            return trace_setting_response(settings)

    async def LogSettings(self, request: pb.LogSettingsRequest, context: Context) -> pb.LogSettingsResponse:
        async with status_on_error(context, "LogSettings"):
            values = log_setting_values(request)
            settings = self._server.update_log_settings(values) if values else self._server.log_settings()
            return log_settings_response(settings)

    # ---- model repository ----

    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest, context: Context) -> pb.RepositoryIndexResponse:
        async with status_on_error(context, "RepositoryIndex"):
            if request.repository_name:
                raise InferError.invalid("'repository_name' specification is not supported")
            # Scans the repository on disk: off the event loop.
            rows = await asyncio.to_thread(self._server.repository_index, request.ready)
            return repository_index_response(rows)

    async def RepositoryModelLoad(self, request: pb.RepositoryModelLoadRequest,
                                  context: Context) -> pb.RepositoryModelLoadResponse:
        async with status_on_error(context, "RepositoryModelLoad"):
            if request.repository_name:
                raise InferError.invalid("'repository_name' specification is not supported")
            config, files = load_parameters(request)
            # Loading reads files and builds runtime sessions: seconds, so never on the event loop.
            await asyncio.to_thread(self._server.load, request.model_name, config, files or None)
            return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(self, request: pb.RepositoryModelUnloadRequest,
                                    context: Context) -> pb.RepositoryModelUnloadResponse:
        async with status_on_error(context, "RepositoryModelUnload"):
            if request.repository_name:
                raise InferError.invalid("'repository_name' specification is not supported")
            await asyncio.to_thread(self._server.unload, request.model_name)
            return pb.RepositoryModelUnloadResponse()
