"""Stage `account`: the request counts in its model's statistics (pending now; success, failure reason and
duration when it ends) and, when sampled, gets a trace. Placed right after `resolve`, so every request that
reached a model is counted, whichever later stage refuses it."""

from __future__ import annotations

import asyncio
import time

from ..observability import FailureReason, Tracer
from ..scheduling import BackendFailure
from ..types import ErrorKind, InferError
from .call import Call


class AccountStage:
    name = "account"

    def __init__(self, tracer: Tracer) -> None:
        self._tracer = tracer

    def __call__(self, call: Call) -> None:
        model = call.model
        tracer = self._tracer
        if tracer.enabled:
            context = call.context
            call.trace = tracer.begin(model.name, model.version, call.request.id, call.start_ns, context.header,
                                      context.protocol)
        model.stats.enter()
        call.on_finish(self._record)

    def _record(self, call: Call) -> None:
        now = time.perf_counter_ns()
        model = call.model
        model.stats.record_request(now - call.start_ns, None if call.error is None else failure_reason(call.cause))
        if call.trace is not None:
            self._tracer.end(call.trace, now, call.error)


def http_status(error: BaseException) -> int:
    """The HTTP status a failed request's answer has (499, nginx's "client closed request", for a cancelled one):
    what the audit trail and the access log record, whatever the protocol."""
    if isinstance(error, InferError):
        return error.kind.http_status
    if isinstance(error, asyncio.CancelledError):
        return 499
    return 500


def failure_reason(exc: BaseException | None) -> FailureReason:
    """The reason a failed request counts under in statistics and metrics (Triton's reasons)."""
    if isinstance(exc, asyncio.CancelledError):
        return FailureReason.CANCELED
    if isinstance(exc, InferError):
        if exc.kind == ErrorKind.UNAVAILABLE:
            return FailureReason.REJECTED
        if exc.kind == ErrorKind.INTERNAL:
            return FailureReason.BACKEND
        return FailureReason.OTHER
    if isinstance(exc, BackendFailure):
        return FailureReason.BACKEND
    return FailureReason.OTHER
