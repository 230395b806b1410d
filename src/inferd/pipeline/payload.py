"""Stage `payload_log` (after `account`, only with `--payload-log`): each request and its answer go to the payload
log (observability/payload_log.py) when the request ends — one append to a bounded queue; the writer thread
encodes and sends. A model's `payload_log` parameter (request, response, all or none) says what is logged of it;
without one, all is."""

from __future__ import annotations

import functools
import logging
import time
from typing import Any

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
        # One finish callback per mode, made once (no closure per request); a model's mode is read from its config
        # once per loaded config.
        self._finishers = {mode: functools.partial(self._record, mode) for mode in MODES}
        self._modes: dict[int, tuple[Any, str]] = {}

    def __call__(self, call: Call) -> None:
        config = call.model.config
        cached = self._modes.get(id(config))
        if cached is None or cached[0] is not config:
            cached = self._modes[id(config)] = (config, self._mode(call))
        mode = cached[1]
        if mode != "none":
            call.on_finish(self._finishers[mode])

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

    def _record(self, mode: str, call: Call) -> None:
        logger = self._logger
        reason = logger.refusal()
        if reason:  # the queue is full or the sink down: counted, nothing built
            logger.drop(reason, mode)
            return
        request = call.request
        model = call.model
        response = call.response
        error = call.error
        if request.shared_inputs:  # the client may overwrite its shared memory once answered: log a copy
            request.inputs = {name: np.array(array) for name, array in request.inputs.items()}
        trace = call.trace
        logger.put(PayloadRecord(
            mode, request.id, model.name, model.version_str, request, response,
            None if error is None else (getattr(error, "message", None) or str(error) or type(error).__name__),
            response.variant if response is not None else "", trace.traceparent if trace is not None else "",
            call.start_ns, time.perf_counter_ns()))
