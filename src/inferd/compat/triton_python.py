"""Triton python-backend models: `TritonPythonModel` with `initialize(args)`, `execute(requests)`, `finalize()`.

`initialize` gets Triton's `args` (all strings): `model_config` (the config as JSON, Triton's form), `model_name`,
`model_version`, `model_repository` (the model's folder), `model_instance_kind` (CPU / GPU),
`model_instance_device_id`, `model_instance_name`. Each core call is one batch, handed to `execute` as a list of one
`InferenceRequest`; the single response's tensors are the call's outputs. A response with an error fails the call
with its message: INVALID_ARGUMENT (HTTP 400) unless the `TritonError` names a code. `execute` may be
`async def` (it runs on an event loop the instance keeps), so that it can `await request.async_exec()` (BLS).
"""

from __future__ import annotations

import asyncio
import inspect
import json
from pathlib import Path
from typing import Any

import numpy as np

import triton_python_backend_utils as pb_utils

from ..config import ConfigError, ModelConfig, ModelInstanceGroup, config_to_json
from ..types import ErrorKind, InferError

_KINDS: dict[int, ErrorKind] = {
    pb_utils.TritonError.UNKNOWN: ErrorKind.INTERNAL,
    pb_utils.TritonError.INTERNAL: ErrorKind.INTERNAL,
    pb_utils.TritonError.NOT_FOUND: ErrorKind.NOT_FOUND,
    pb_utils.TritonError.INVALID_ARG: ErrorKind.INVALID_ARGUMENT,
    pb_utils.TritonError.UNAVAILABLE: ErrorKind.UNAVAILABLE,
    pb_utils.TritonError.UNSUPPORTED: ErrorKind.UNSUPPORTED,
    pb_utils.TritonError.ALREADY_EXISTS: ErrorKind.INVALID_ARGUMENT,
    pb_utils.TritonError.CANCELLED: ErrorKind.CANCELLED,
}


def infer_error(error: pb_utils.TritonError) -> InferError:
    """A model's TritonError as the core's error: its code's kind, or a bad request when it gave none."""
    kind = _KINDS.get(error.code(), ErrorKind.INTERNAL) if error.code_given else ErrorKind.INVALID_ARGUMENT
    return InferError(kind, error.message() or "the model answered with an error")


def initialize_args(config: ModelConfig, files: Path, device: str) -> dict[str, str]:
    gpu = device.startswith("cuda")
    kind = ModelInstanceGroup.KIND_GPU if gpu else ModelInstanceGroup.KIND_CPU
    group = next((g.name for g in config.instance_group if g.kind == kind), config.name)
    return {
        "model_config": json.dumps(config_to_json(config)),
        "model_instance_kind": "GPU" if gpu else "CPU",
        "model_instance_device_id": device.partition(":")[2] or "0",
        "model_instance_name": f"{group}_0",
        "model_repository": str(files.parent),
        "model_version": files.name,
        "model_name": config.name,
    }


class TritonModel:
    """One `TritonPythonModel`, driven one batch at a time."""

    def __init__(self, cls: type, config: ModelConfig, files: Path, device: str) -> None:
        if config.model_transaction_policy.decoupled:
            raise ConfigError("decoupled Python models (model_transaction_policy { decoupled: true }) are not "
                              "supported by inferd")
        if not callable(getattr(cls, "execute", None)):
            raise ConfigError(f"{cls.__name__} has no 'execute' method")
        self._args = initialize_args(config, files, device)
        self._name = config.name
        self._outputs = [tensor.name for tensor in config.output]
        self._event_loop: asyncio.AbstractEventLoop | None = None
        try:
            self._model = cls()
        except Exception as exc:
            raise ConfigError(f"{cls.__name__}() raised {type(exc).__name__}: {' '.join(str(exc).split())}") from None

    def load(self) -> None:
        initialize = getattr(self._model, "initialize", None)
        if initialize is None:
            return
        try:
            initialize(self._args)
        except Exception as exc:
            raise ConfigError(f"initialize raised {type(exc).__name__}: {' '.join(str(exc).split())}") from None

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, Any]:
        request = pb_utils.InferenceRequest(
            inputs=[pb_utils.Tensor(name, value) for name, value in inputs.items()],
            requested_output_names=self._outputs, model_name=self._name)
        returned = self._model.execute([request])
        if inspect.isawaitable(returned):  # `async def execute` (Triton allows it, e.g. for BLS's async_exec)
            returned = self._loop().run_until_complete(returned)
        if returned is None:  # sent through the request's response sender instead
            responses: Any = request.get_response_sender().responses
        else:
            responses = returned
        if not isinstance(responses, list | tuple) or len(responses) != 1:
            count = len(responses) if isinstance(responses, list | tuple) else type(responses).__name__
            raise InferError.internal(f"execute must return one InferenceResponse per request (1 request), "
                                      f"got {count}")
        response = responses[0]
        if not isinstance(response, pb_utils.InferenceResponse):
            raise InferError.internal(f"execute must return pb_utils.InferenceResponse, got {type(response).__name__}")
        error = response.error()
        if error is not None:
            raise infer_error(error)
        return {tensor.name(): tensor.as_numpy() for tensor in response.output_tensors()}

    def _loop(self) -> asyncio.AbstractEventLoop:
        """The event loop an async `execute` runs on: one per instance, kept across calls."""
        if self._event_loop is None:
            self._event_loop = asyncio.new_event_loop()
        return self._event_loop

    def close(self) -> None:
        finalize = getattr(self._model, "finalize", None)
        try:
            if finalize is not None:
                finalize()
        finally:
            if self._event_loop is not None:
                self._event_loop.close()
                self._event_loop = None
