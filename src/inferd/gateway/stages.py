"""Stage `authenticate` (before `resolve`): the caller's key → its tenant, the tenant's model grants (a model it is
not granted is answered as a missing one), its limits (rate, in flight, daily quota), and one audit record and
one metric sample per call, however it ends — refused calls included."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import numpy as np

from ..pipeline.account import http_status
from ..pipeline.call import Call
from ..types import InferError
from .audit_record import AuditRecord
from .config import Principal
from .gate import TRUSTED_PROTOCOLS, Gateway, new_request_id

__all__ = ["AuthenticateStage", "payload_bytes"]

_TENANT = "tenant"


class AuthenticateStage:
    name = "authenticate"
    before = "resolve"

    def __init__(self, gateway: Gateway, ready_versions: Callable[[str], list[str]]) -> None:
        self._gateway = gateway
        self._metrics = gateway.metrics
        self._audit = gateway.audit
        self._ready_versions = ready_versions  # the model's ready versions, newest first

    def __call__(self, call: Call) -> None:
        context = call.context
        if context.protocol in TRUSTED_PROTOCOLS:
            return
        call.on_finish(self._record)  # first registered, last run: sees the outcome of everything after
        request = call.request
        if not request.id:
            request.id = context.header("x-request-id") or new_request_id()
        principal = context.principal
        if principal is None:
            principal = self._gateway.identify(context.header)
        call.state[_TENANT] = principal
        self._check_grant(principal, call)
        gateway = self._gateway
        try:
            holds = gateway.limits.acquire(principal)
        except InferError as exc:
            gateway.rejected(principal.name, exc.reason)
            raise
        if holds:
            call.on_finish(lambda c: gateway.limits.release(principal))

    def _check_grant(self, principal: Principal, call: Call) -> None:
        request = call.request
        name = request.model_name
        seen, versions = principal.granted(name)  # cached per model name: the common case is two dict reads
        if versions is None and seen:
            return
        Gateway.check_model(principal, name, request.model_version)  # the answer for a missing model or version
        if request.model_version or versions is None:
            return
        # Only some versions are granted: the newest of those that is ready serves a request that names none.
        for version in self._ready_versions(name):
            if version in versions:
                request.model_version = version
                return
        raise InferError.not_found(f"Request for unknown model: '{name}' has no available versions")

    def _record(self, call: Call) -> None:
        error = call.error
        status = 200 if error is None else http_status(error)
        state = call.state
        principal: Principal | None = state.get(_TENANT)
        request = call.request
        name = request.model_name
        if principal is not None:
            self._metrics.request(principal.name, name, status)
        audit = self._audit
        if audit is None:
            return
        model = call.model
        latency_ns = time.perf_counter_ns() - call.start_ns
        context = call.context
        response = call.response
        audit.record(AuditRecord(
            time.time() - latency_ns / 1e9, None if principal is None else principal.name, name,
            model.version_str if model is not None else request.model_version, context.protocol, context.endpoint,
            status, latency_ns / 1e6, payload_bytes(request.inputs),
            0 if response is None else payload_bytes(response.outputs), request.id, context.peer))


def payload_bytes(tensors: Mapping[str, np.ndarray]) -> int:
    """The tensor data a call carried (the same measure on every protocol, whatever its wire encoding)."""
    total = 0
    for array in tensors.values():
        if array.dtype.kind != "O":
            total += array.nbytes
        else:
            total += sum(len(v) for v in array.flat if isinstance(v, (bytes, str)))
    return total
