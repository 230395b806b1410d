"""Stage `access_log` (first of all, only with `--log-format json`): one structured line per request, however it
ends — model, version, protocol, endpoint, peer, status (the HTTP status its error maps to; 200 when answered),
latency, batch size, request id, and the tenant when the gateway identified one. The line is an INFO record of
the `inferd.access` logger whose `fields` the JSON log format writes as the line's keys."""

from __future__ import annotations

import logging
import time
from typing import Any

from .account import http_status
from .call import Call

log = logging.getLogger("inferd.access")

_TENANT = "tenant"  # where the gateway's `authenticate` stage leaves the caller's Principal (gateway/stages.py)


class AccessLogStage:
    name = "access_log"

    def __call__(self, call: Call) -> None:
        call.on_finish(self._record)  # registered first: runs last, after every other stage's bookkeeping

    @staticmethod
    def _record(call: Call) -> None:
        if not log.isEnabledFor(logging.INFO):
            return
        latency_ms = (time.perf_counter_ns() - call.start_ns) / 1e6
        request = call.request
        model = call.model
        context = call.context
        error = call.error
        status = 200 if error is None else http_status(error)
        fields: dict[str, Any] = {
            "request_id": request.id, "model": model.name if model is not None else request.model_name,
            "version": model.version_str if model is not None else request.model_version,
            "protocol": context.protocol, "endpoint": context.endpoint, "peer": context.peer, "status": status,
            "latency_ms": round(latency_ms, 3), "batch_size": _batch_size(call)}
        if error is not None:
            fields["error"] = getattr(error, "message", None) or str(error) or type(error).__name__
        principal = call.state.get(_TENANT)
        if principal is not None:
            fields["tenant"] = principal.name
        log.info("%s %s %s %d %.3f ms", context.protocol, fields["model"], fields["version"] or "-", status,
                 latency_ms, extra={"fields": fields})


def _batch_size(call: Call) -> int:
    """The rows the request carried: its scheduler job's, else its first input's leading dimension (batching
    models), else 1."""
    job = call.job
    if job is not None:
        return int(job.rows)
    model = call.model
    if model is not None and model.max_batch_size > 0:
        for array in call.request.inputs.values():
            return int(array.shape[0]) if array.ndim else 1
    return 1
