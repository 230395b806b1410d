"""gRPC interceptors: Triton's restricted API groups (`--grpc-restricted-protocol`) and the gateway's
authentication (`--auth-config`): both decide from the method and the metadata, before the servicer runs."""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import grpc

from ...gateway.config import Principal
from ...gateway.gate import ADMIN_GROUPS, Gateway, admin_only
from ...protos import service_pb2 as pb
from ...types import InferError

__all__ = ["RESTRICTED_KEY_PREFIX", "RPC_API", "AuthInterceptor", "RestrictedApiInterceptor", "refusal"]

_SERVICE = "/inference.GRPCInferenceService/"
_HEALTH = "/grpc.health.v1.Health/"

# Every RPC's API group (Triton's, as `--grpc-restricted-protocol` names them); the standard health protocol is in
# "health" with Triton's own health RPCs.
RPC_API: dict[str, str] = {
    **{_SERVICE + rpc: "health" for rpc in ("ServerLive", "ServerReady", "ModelReady")},
    **{_HEALTH + rpc: "health" for rpc in ("Check", "Watch")},
    **{_SERVICE + rpc: "metadata" for rpc in ("ServerMetadata", "ModelMetadata")},
    **{_SERVICE + rpc: "inference" for rpc in ("ModelInfer", "ModelStreamInfer")},
    **{_SERVICE + f"{kind}SharedMemory{verb}": "shared-memory"
       for kind in ("System", "Cuda") for verb in ("Status", "Register", "Unregister")},
    _SERVICE + "ModelConfig": "model-config",
    **{_SERVICE + rpc: "model-repository"
       for rpc in ("RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload")},
    _SERVICE + "ModelStatistics": "statistics",
    _SERVICE + "TraceSetting": "trace",
    _SERVICE + "LogSettings": "logging",
}
# Triton prefixes the configured key so restriction metadata cannot collide with other metadata.
RESTRICTED_KEY_PREFIX = "triton-grpc-protocol-"


class RestrictedApiInterceptor(grpc.aio.ServerInterceptor):
    """Calls of a restricted API group without the metadata `triton-grpc-protocol-<key>: <value>` end with
    UNAVAILABLE before the servicer sees them, with Triton's message (Triton answers UNAVAILABLE too).

    `restricted`: API group -> (key, value), as `--grpc-restricted-protocol` gives them.
    """

    def __init__(self, restricted: Mapping[str, tuple[str, str]]) -> None:
        self._required = {group: (RESTRICTED_KEY_PREFIX + key.lower(), value)
                          for group, (key, value) in restricted.items()}

    async def intercept_service(self, continuation: Callable[[Any], Awaitable[Any]],
                                handler_call_details: Any) -> Any:
        required = self._required.get(RPC_API.get(handler_call_details.method, ""))
        handler = await continuation(handler_call_details)
        if required is None or handler is None:
            return handler
        key, value = required
        for name, given in handler_call_details.invocation_metadata or ():
            if name == key and isinstance(given, str) and hmac.compare_digest(given.encode(), value.encode()):
                return handler
        return refusal(handler, grpc.StatusCode.UNAVAILABLE, f"This protocol is restricted, expecting header '{key}'")


def refusal(handler: Any, code: grpc.StatusCode, message: str) -> Any:
    """A handler of the same shape as `handler` that ends the call with `code` and `message`."""

    async def unary(request: Any, context: Any) -> Any:
        await context.abort(code, message)

    async def streaming(request: Any, context: Any) -> AsyncIterator[Any]:
        await context.abort(code, message)
        yield  # pragma: no cover - abort raises

    serializers = {"request_deserializer": handler.request_deserializer,
                   "response_serializer": handler.response_serializer}
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(unary, **serializers)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(streaming, **serializers)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(unary, **serializers)
    return grpc.stream_stream_rpc_method_handler(streaming, **serializers)


# Methods that name one model (the request's `name`): a tenant gets NOT_FOUND, as for a missing model, for a
# model it is not granted. ModelStatistics and RepositoryIndex answer tenants with their own models only.
_MODEL_METHODS = frozenset(_SERVICE + rpc for rpc in ("ModelMetadata", "ModelReady", "ModelConfig",
                                                      "ModelStatistics"))
_FILTERED = frozenset((_SERVICE + "ModelStatistics", _SERVICE + "RepositoryIndex"))
_INFERENCE = frozenset((_SERVICE + "ModelInfer", _SERVICE + "ModelStreamInfer"))
# The HTTP health paths whose being open (`open_paths`) opens the gRPC methods that answer the same question.
_OPEN_BY_PATH = {"/v2/health/live": (_SERVICE + "ServerLive", _HEALTH + "Check", _HEALTH + "Watch"),
                 "/v2/health/ready": (_SERVICE + "ServerReady", _HEALTH + "Check", _HEALTH + "Watch")}


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """The gateway on gRPC: UNAUTHENTICATED without a valid key (metadata `authorization: Bearer KEY` or
    `x-api-key`), PERMISSION_DENIED for a tenant on an admin method, NOT_FOUND for a model it is not granted,
    and answers listing models cut down to the tenant's own. Inference calls are checked further by the
    pipeline's `authenticate` stage (grants, limits, audit)."""

    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway

    async def intercept_service(self, continuation: Callable[[Any], Awaitable[Any]],
                                handler_call_details: Any) -> Any:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        gateway = self._gateway
        if handler is None or _is_open(gateway, method):
            return handler
        metadata = handler_call_details.invocation_metadata or ()
        try:
            principal = gateway.identify(lambda name: _metadata(metadata, name))
        except InferError as exc:
            if method == _SERVICE + "ModelInfer":
                return _refused_infer(handler, gateway, exc, _metadata(metadata, "x-request-id"))
            if method in _INFERENCE:
                gateway.refused("v2-grpc", method, "", exc, _metadata(metadata, "x-request-id"), "")
            return refusal(handler, grpc.StatusCode[exc.kind.grpc_code_name], exc.message)
        if principal.admin:
            return handler
        if RPC_API.get(method) in ADMIN_GROUPS and method != _SERVICE + "RepositoryIndex":
            error = admin_only(method)
            return refusal(handler, grpc.StatusCode[error.kind.grpc_code_name], error.message)
        if method in _MODEL_METHODS or method in _FILTERED:
            return _scoped(handler, principal, method in _FILTERED)
        return handler


def _refused_infer(handler: Any, gateway: Gateway, error: InferError, request_id: str | None) -> Any:
    """A ModelInfer refused for its key: the call is audited with the model it named, then ends with `error`."""

    async def unary(request: Any, context: Any) -> Any:
        peer = context.peer()
        client = peer.partition(":")[2] if peer.startswith(("ipv4:", "ipv6:")) else peer
        gateway.refused("v2-grpc", _SERVICE + "ModelInfer", request.model_name, error, request.id or request_id,
                        client)
        await context.abort(grpc.StatusCode[error.kind.grpc_code_name], error.message)

    return grpc.unary_unary_rpc_method_handler(unary, request_deserializer=handler.request_deserializer,
                                               response_serializer=handler.response_serializer)


def _is_open(gateway: Gateway, method: str) -> bool:
    return any(method in _OPEN_BY_PATH.get(path, ()) for path in gateway.config.open_paths)


def _metadata(metadata: Any, name: str) -> str | None:
    for key, value in metadata:
        if key == name:
            return value.decode("latin-1") if isinstance(value, bytes) else str(value)
    return None


def _scoped(handler: Any, principal: Principal, filtered: bool) -> Any:
    """`handler` for a tenant: a model it is not granted is NOT_FOUND (not ready, for ModelReady), as a missing
    one; lists keep only its models."""
    behavior = handler.unary_unary

    async def unary(request: Any, context: Any) -> Any:
        name = getattr(request, "name", "")
        if name:
            try:
                Gateway.check_model(principal, name, getattr(request, "version", ""))
            except InferError as exc:
                if isinstance(request, pb.ModelReadyRequest):  # an unknown model is simply not ready: so is this
                    return pb.ModelReadyResponse(ready=False)
                await context.abort(grpc.StatusCode[exc.kind.grpc_code_name], exc.message)
        response = await behavior(request, context)
        if filtered:
            _keep_visible(response, principal)
        elif isinstance(response, pb.ModelMetadataResponse):  # a tenant granted some versions sees those only
            versions = [v for v in response.versions if principal.sees_version(name, v)]
            if len(versions) != len(response.versions):
                del response.versions[:]
                response.versions.extend(versions)
        return response

    return grpc.unary_unary_rpc_method_handler(unary, request_deserializer=handler.request_deserializer,
                                               response_serializer=handler.response_serializer)


def _keep_visible(response: Any, principal: Principal) -> None:
    rows = response.model_stats if hasattr(response, "model_stats") else response.models
    keep = [row for row in rows if principal.sees_version(row.name, row.version)]
    if len(keep) != len(rows):
        del rows[:]
        rows.extend(keep)
