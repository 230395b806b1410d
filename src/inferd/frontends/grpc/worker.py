"""The gRPC door of an HTTP worker process (`inferd serve --workers N`, `frontends/workers.py`).

Each worker runs a `grpc.aio` server on its own event loop (the one its HttpServer runs on) bound to the public gRPC
port with SO_REUSEPORT. ModelInfer of plain tensors takes the fast path: the request is decoded here with the gRPC
codec, sent to main on the worker's channel as the HTTP fast path sends its requests (protocol `v2-grpc`, the call's
metadata), and main's answer is encoded here as the single process encodes it. Every other call (and a ModelInfer
the worker cannot decode or that uses shared memory; every call when the fast path is off) is proxied as bytes to
main's own gRPC server on a private Unix socket: metadata in, initial and trailing metadata, status code and details
back, streams as streams.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc

from ...protos import service_pb2 as pb
from ...types import VARIANT_HEADER, ErrorKind, InferError, describe_error, public_error_text
from ..tls import TlsSettings
from ..workers import uses_client_memory
from .codec import decode_infer_request, encode_infer_response
from .frontend import MAX_PENDING_RPCS, _address, _credentials

if TYPE_CHECKING:
    from ..workers import _WorkerApp

__all__ = ["GrpcWorkerConfig", "WorkerGrpc"]

log = logging.getLogger("inferd.grpc")

INFER = "/inference.GRPCInferenceService/ModelInfer"
# Methods that are not unary-unary, by their kind; every other one is proxied as unary-unary.
_STREAMS = {"/inference.GRPCInferenceService/ModelStreamInfer": "stream_stream",
            "/grpc.health.v1.Health/Watch": "unary_stream"}
_BYTES = None  # no (de)serializer: the message's bytes as they came


@dataclass(frozen=True)
class GrpcWorkerConfig:
    """Where the workers serve gRPC, and where main's own gRPC server answers what they forward."""

    address: str
    port: int
    private: str  # main's gRPC server: "unix:/path"
    max_message_bytes: int
    tls: TlsSettings | None
    fast_infer: bool  # False: every call goes to main as it came


def _forwarded(metadata: Any) -> tuple[tuple[str, Any], ...]:
    """The invocation metadata a proxied call carries (grpc adds its own user agent and pseudo-headers)."""
    return tuple((key, value) for key, value in metadata or () if not key.startswith(":") and key != "user-agent")


class _Handler(grpc.GenericRpcHandler):
    def __init__(self, door: WorkerGrpc) -> None:
        self.door = door

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method = details.method
        if method == INFER:
            return grpc.unary_unary_rpc_method_handler(self.door.infer, _BYTES, _BYTES)
        kind = _STREAMS.get(method, "unary_unary")
        door = self.door
        # grpc.aio runs a handler as a coroutine (or async generator) only when it is an `async def` one.
        if kind == "stream_stream":
            async def stream(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
                async for response in door.stream(method, requests, context):
                    yield response

            return grpc.stream_stream_rpc_method_handler(stream, _BYTES, _BYTES)
        if kind == "unary_stream":
            async def unary_stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
                async for response in door.unary_stream(method, request, context):
                    yield response

            return grpc.unary_stream_rpc_method_handler(unary_stream, _BYTES, _BYTES)

        async def unary(request: bytes, context: Any) -> bytes:
            return await door.unary(method, request, context)

        return grpc.unary_unary_rpc_method_handler(unary, _BYTES, _BYTES)


class WorkerGrpc:
    """A worker's gRPC server: `start` (OSError when it cannot bind), `stop`."""

    def __init__(self, config: GrpcWorkerConfig, app: _WorkerApp) -> None:
        self.config = config
        self.app = app
        options = [("grpc.max_send_message_length", config.max_message_bytes),
                   ("grpc.max_receive_message_length", config.max_message_bytes)]
        self.channel = grpc.aio.insecure_channel(config.private, options=options)
        self.server = grpc.aio.server(options=[
            *options,
            ("grpc.so_reuseport", 1),  # every worker listens on the port; the kernel spreads connections
            ("grpc.server.max_pending_requests", MAX_PENDING_RPCS),
            ("grpc.server.max_pending_requests_hard_limit", MAX_PENDING_RPCS),
        ])
        self.server.add_generic_rpc_handlers((_Handler(self),))

    async def start(self) -> int:
        address = _address(self.config.address, self.config.port)
        try:
            if self.config.tls is None:
                port = self.server.add_insecure_port(address)
            else:
                port = self.server.add_secure_port(address, _credentials(self.config.tls))
        except RuntimeError as exc:
            raise OSError(f"cannot bind {address} ({exc})") from None
        if port == 0:
            raise OSError(f"cannot bind {address}")
        await self.server.start()
        return int(port)

    async def stop(self, timeout: float) -> None:
        await self.server.stop(timeout)
        await self.channel.close()

    # ---- ModelInfer: decoded here, run by main ----

    async def infer(self, raw: bytes, context: Any) -> bytes:
        if not self.config.fast_infer:
            return await self.unary(INFER, raw, context)
        try:
            request = decode_infer_request(pb.ModelInferRequest.FromString(raw), self.app.config.request_limits)
        except Exception:
            return await self.unary(INFER, raw, context)
        if uses_client_memory(request):
            return await self.unary(INFER, raw, context)  # client shared memory: main reads and writes the regions
        app = self.app
        answer = await app.ask_infer(request, None, INFER, _forwarded(context.invocation_metadata()))
        del request
        kind = answer[0]
        if kind == "ok":
            with app.response_of(answer) as (response, variant):
                try:
                    encoded = encode_infer_response(response).SerializeToString()
                except InferError as exc:
                    await context.abort(grpc.StatusCode[exc.kind.grpc_code_name], exc.message)
                except Exception as exc:
                    log.exception("gRPC ModelInfer failed")
                    await context.abort(grpc.StatusCode.INTERNAL,
                                        f"ModelInfer failed: {public_error_text(describe_error(exc))}")
            if variant:
                context.set_trailing_metadata(((VARIANT_HEADER, variant),))
            return encoded
        if kind == "error":
            await context.abort(grpc.StatusCode[ErrorKind[answer[2]].grpc_code_name], answer[3])
        # ("reply", rid, status, payload, headers): main's answer to an unexpected failure
        await context.abort(grpc.StatusCode.INTERNAL, answer[3].decode(errors="replace")
                            if isinstance(answer[3], bytes) else str(answer[3]))
        raise AssertionError("unreachable")  # context.abort raises

    # ---- everything else: proxied to main as bytes ----

    def _options(self, context: Any) -> dict[str, Any]:
        remaining = context.time_remaining()
        return {"metadata": _forwarded(context.invocation_metadata()),
                "timeout": remaining if remaining is not None and remaining < 1e9 else None}

    async def _finish(self, call: Any, context: Any) -> None:
        """The proxied call's trailing metadata and status, as main gave them."""
        trailing = await call.trailing_metadata()
        code = await call.code()
        if code != grpc.StatusCode.OK:
            await context.abort(code, await call.details() or "", tuple(trailing or ()))
        if trailing:
            context.set_trailing_metadata(tuple(trailing))

    async def _initial(self, call: Any, context: Any) -> None:
        initial = await call.initial_metadata()
        if initial:
            await context.send_initial_metadata(tuple(initial))

    async def unary(self, method: str, raw: bytes, context: Any) -> bytes:
        call = self.channel.unary_unary(method)(raw, **self._options(context))
        try:
            response = await call
        except grpc.aio.AioRpcError:
            await self._finish(call, context)
            raise
        except asyncio.CancelledError:
            call.cancel()
            raise
        await self._finish(call, context)
        return bytes(response)

    async def unary_stream(self, method: str, raw: bytes, context: Any) -> AsyncIterator[bytes]:
        async for response in self._relay(self.channel.unary_stream(method)(raw, **self._options(context)), context):
            yield response

    async def stream(self, method: str, requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
        call = self.channel.stream_stream(method)(requests, **self._options(context))
        async for response in self._relay(call, context):
            yield response

    async def _relay(self, call: Any, context: Any) -> AsyncIterator[bytes]:
        """Main's responses of a streaming call, then its status and trailing metadata onto the client's call."""
        try:
            async for response in call:
                yield response
        except grpc.aio.AioRpcError:
            pass
        finally:
            if not call.done():
                call.cancel()
        await self._finish(call, context)
