"""Stage `payload_log` (after `account`, only with `--payload-log`): each request and its answer go to the payload
log (observability/payload_log.py) when the request ends — one append to a bounded queue; the writer thread
encodes and sends. A model's `payload_log` parameter (request, response, all or none) says what is logged of it;
without one, all is."""

from __future__ import annotations

import logging
import time
import uuid

import numpy as np

from ..observability.payload_log import MODES, PayloadLogger, PayloadRecord
from .call import Call

log = logging.getLogger("inferd.payload_log")

PARAMETER = "payload_log"


class PayloadLogStage:
    name = "payload_log"
    after = "account"

    def __init__(self, logger: PayloadLogger, default: str = "all") -> None:
        self._logger = logger
        self._default = default
        self._warned: set[str] = set()

    def __call__(self, call: Call) -> None:
        if self._mode(call) != "none":
            call.on_finish(self._record)

    def _mode(self, call: Call) -> str:
        parameters = call.model.config.parameters
        if PARAMETER not in parameters:
            return self._default
        mode = parameters[PARAMETER].string_value.strip().lower()
        if mode in MODES:
            return mode
        name = call.model.name
        if name not in self._warned:
            self._warned.add(name)
            log.warning("model '%s': parameter payload_log '%s' is not one of %s; logging %s", name, mode,
                        ", ".join(MODES), self._default)
        return self._default

    def _record(self, call: Call) -> None:
        request = call.request
        model = call.model
        response = call.response
        error = call.error
        if request.shared_inputs:  # the client may overwrite its shared memory once answered: log a copy
            request.inputs = {name: np.array(array) for name, array in request.inputs.items()}
        trace = call.trace
        self._logger.put(PayloadRecord(
            self._mode(call), request.id or uuid.uuid4().hex, model.name, model.version_str, request, response,
            None if error is None else (getattr(error, "message", None) or str(error) or type(error).__name__),
            response.variant if response is not None else "", trace.traceparent if trace is not None else "",
            call.start_ns, time.perf_counter_ns()))
