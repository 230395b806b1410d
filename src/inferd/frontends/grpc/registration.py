"""The inference service's method handlers, built from the protobuf service descriptor, with one difference from
the generated `add_GRPCInferenceServiceServicer_to_server`: a request that is no valid protobuf message ends with
INVALID_ARGUMENT (the client's error), where grpc's own deserializer failure gives UNKNOWN and a traceback in the
log."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from ...protos import service_pb2 as pb

__all__ = ["add_inference_servicer"]

SERVICE = "inference.GRPCInferenceService"


class _Undecodable:
    """What the tolerant deserializer hands on for bytes that are no message of the method's request type."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _deserializer(message_type: Any) -> Callable[[bytes], Any]:
    parse = message_type.FromString

    def deserialize(data: bytes) -> Any:
        try:
            return parse(data)
        except DecodeError as exc:
            return _Undecodable(f"the request is not a valid {message_type.DESCRIPTOR.full_name} message: {exc}")

    return deserialize


def _unary(behavior: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    async def unary(request: Any, context: Any) -> Any:
        if type(request) is _Undecodable:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.reason)
        return await behavior(request, context)

    return unary


def _streaming(behavior: Callable[[Any, Any], AsyncIterator[Any]]) -> Callable[[Any, Any], AsyncIterator[Any]]:
    async def streaming(requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
        async def checked() -> AsyncIterator[Any]:
            async for request in requests:
                if type(request) is _Undecodable:
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.reason)
                yield request

        async for answer in behavior(checked(), context):
            yield answer

    return streaming


def add_inference_servicer(servicer: Any, server: Any) -> None:
    """Register `servicer`'s methods (every method of Triton's service) on `server`."""
    handlers = {}
    for method in pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods:
        request_type = getattr(pb, method.input_type.name)
        response_type = getattr(pb, method.output_type.name)
        behavior = getattr(servicer, method.name)
        options = {"request_deserializer": _deserializer(request_type),
                   "response_serializer": response_type.SerializeToString}
        if method.client_streaming and method.server_streaming:
            handlers[method.name] = grpc.stream_stream_rpc_method_handler(_streaming(behavior), **options)
        elif not method.client_streaming and not method.server_streaming:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(_unary(behavior), **options)
        else:  # Triton's service has no such method; registered as the generated code would, should one come
            raise ValueError(f"{SERVICE}/{method.name}: half-streaming methods are not served")
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_registered_method_handlers(SERVICE, handlers)
