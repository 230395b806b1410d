"""Stage `admit`: the request's checks before it may queue — request limits, shared-memory regions, inputs and
outputs against the model's configuration — and its scheduler job (priority and timeout parameters)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..limits import RequestLimits
from ..memory import SHM_BYTE_SIZE, SHM_OFFSET, SHM_REGION, SharedMemoryLease, SystemSharedMemory, shared_memory_ref
from ..model import ServedModel
from ..types import MESSAGE_TENSOR, InferenceRequest, InferError
from .call import Call

_SHM_PARAMETERS = frozenset((SHM_REGION, SHM_OFFSET, SHM_BYTE_SIZE))


class Admitted:
    """What admitting a request decided beyond its job: the outputs to return, those to return as classes, and
    the shared-memory regions it holds."""

    __slots__ = ("classes", "lease", "names")

    def __init__(self, names: list[str], classes: dict[str, int], lease: SharedMemoryLease | None) -> None:
        self.names = names
        self.classes = classes
        self.lease = lease


class AdmitStage:
    name = "admit"

    def __init__(self, limits: RequestLimits, shared_memory: SystemSharedMemory) -> None:
        self._limits = limits
        self._shared_memory = shared_memory

    def __call__(self, call: Call) -> None:
        model = call.model
        request = call.request
        if request.message is not None:
            self._admit_message(call, model, request)
            return
        self._check_limits(request)
        lease = self._bind_shared_memory(request) if _uses_shared_memory(request) else None
        if lease is not None:  # held from now on, whatever fails next: given back when the request ends
            call.admitted = Admitted([], {}, lease)
            call.on_finish(_release)
        feeds, rows = model.check_inputs(request)
        names = model.check_outputs(request)
        classes = model.classifications(request) if request.outputs else {}
        params = request.parameters
        if params:
            job = model.scheduler.make_job(feeds, rows, int_parameter(params, "priority"),
                                           int_parameter(params, "timeout"))
        else:
            job = model.scheduler.make_job(feeds, rows, 0, 0)
        job.trace = call.trace
        call.job = job
        call.admitted = Admitted(names, classes, lease)

    @staticmethod
    def _admit_message(call: Call, model: ServedModel, request: InferenceRequest) -> None:
        """A whole protocol message (a Seldon call) travels as one object element to a model that takes them."""
        if not model.takes_messages:
            raise InferError.invalid(f"model '{model.name}' takes tensors, not '{request.operation}' messages")
        carrier = np.empty(1, dtype=np.object_)
        carrier[0] = (request.operation, request.message)
        params = request.parameters
        call.job = job = model.scheduler.make_job({MESSAGE_TENSOR: carrier}, 1, int_parameter(params, "priority"),
                                                  int_parameter(params, "timeout"))
        job.trace = call.trace

    def _check_limits(self, request: InferenceRequest) -> None:
        """The request limits, for requests built in-process (frontends check them while decoding as well)."""
        limits = self._limits
        limits.check_input_count(len(request.inputs) + len(request.shared_inputs))
        for name, array in request.inputs.items():
            limits.check_count(name, array.size)
        for name, (shape, _) in request.shared_inputs.items():
            limits.check_elements(name, shape)

    def _bind_shared_memory(self, request: InferenceRequest) -> SharedMemoryLease:
        """Hold the regions the request names: its shared inputs become views of them, its placed outputs are
        checked before the model runs."""
        lease = SharedMemoryLease(self._shared_memory)
        try:
            for name, (shape, ref) in request.shared_inputs.items():
                if name in request.inputs:
                    raise InferError.invalid(f"input '{name}' is given more than once")
                request.inputs[name] = lease.read_input(name, request.datatypes.get(name, ""), shape, ref)
            for out in request.outputs or ():
                placed = shared_memory_ref(f"output '{out.name}'", out.parameters) if out.parameters else None
                if placed is not None:
                    lease.place_output(out.name, placed)
        except BaseException:
            lease.release()
            raise
        return lease


def _release(call: Call) -> None:
    admitted = call.admitted
    if admitted is not None and admitted.lease is not None:
        admitted.lease.release()


def _uses_shared_memory(request: InferenceRequest) -> bool:
    if request.shared_inputs:
        return True
    outputs = request.outputs
    if not outputs:  # most requests: no generator to make
        return False
    return any(out.parameters and not _SHM_PARAMETERS.isdisjoint(out.parameters) for out in outputs)


def int_parameter(params: Mapping[str, Any], key: str) -> int:
    value = params.get(key, 0)
    if value is None or value == "":
        return 0
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise InferError.invalid(f"parameter '{key}' must be an integer")
    try:
        return int(value)
    except ValueError:
        raise InferError.invalid(f"parameter '{key}' must be an integer, got '{value}'") from None
