"""Triton's `triton_python_backend_utils` for models that inferd's python backend serves.

A Triton python-backend `model.py` starts with `import triton_python_backend_utils as pb_utils` and builds its
responses with the names below; inferd provides this module so such a model runs unchanged. It is plain Python
and numpy (no C extension, no shared-memory stub process): inferd already runs each instance in a process of its
own and hands it numpy arrays.

What differs from Triton, on purpose or for now:

* One call, one request: inferd's scheduler hands `execute` one `InferenceRequest` holding the whole (possibly
  dynamically batched) batch, so `requests` always has one element.
* `requested_output_names()` are all the outputs of the model config (the server picks what each client asked
  for afterwards); `request_id()` is empty and `correlation_id()` 0.
* BLS works as in Triton: `InferenceRequest(model_name=..., inputs=[...], requested_output_names=[...]).exec()`
  (or `await request.async_exec()` in an `async def execute`) runs any model of the same server and returns an
  `InferenceResponse`; a failure (unknown model, bad input) is a response whose `has_error()` is true, not an
  exception. The request travels over the instance's pipe and runs through the server's core (see
  `inferd.instances.bls`, which also states the deadlock rule: a single-instance model calling itself is refused).
  BLS tensors are pickled, not shared; `decoupled=True` and `preferred_memory` are not supported.
* Decoupled mode is not supported. A response may still be sent through
  `get_response_sender().send(response, flags=TRITONSERVER_RESPONSE_COMPLETE_FINAL)` with `execute` returning None
  (Triton's default mode allows that since 24.06).
* `TritonPythonModel.auto_complete_config(config)` is called in a short-lived process of its own (never in the
  server process), before the instances start: the module is imported there once more.
"""

from __future__ import annotations

import enum
import json
import logging
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from inferd.types import CONFIG_TO_V2, V2_TO_NUMPY

__all__ = [
    "TRITONSERVER_REQUEST_FLAG_SEQUENCE_END",
    "TRITONSERVER_REQUEST_FLAG_SEQUENCE_START",
    "TRITONSERVER_REQUEST_RELEASE_ALL",
    "TRITONSERVER_REQUEST_RELEASE_RESCHEDULE",
    "TRITONSERVER_RESPONSE_COMPLETE_FINAL",
    "AutoCompleteError",
    "InferenceRequest",
    "InferenceResponse",
    "InferenceResponseSender",
    "LogLevel",
    "Logger",
    "ModelConfig",
    "Tensor",
    "TritonError",
    "TritonModelException",
    "deserialize_bytes_tensor",
    "get_input_config_by_name",
    "get_input_tensor_by_name",
    "get_output_config_by_name",
    "get_output_tensor_by_name",
    "numpy_to_triton_type",
    "serialize_byte_tensor",
    "triton_string_to_numpy",
    "triton_to_numpy_type",
    "using_decoupled_model_transaction_policy",
]

TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1
TRITONSERVER_REQUEST_FLAG_SEQUENCE_START = 1
TRITONSERVER_REQUEST_FLAG_SEQUENCE_END = 2
TRITONSERVER_REQUEST_RELEASE_ALL = 1
TRITONSERVER_REQUEST_RELEASE_RESCHEDULE = 2

# model_config.proto's DataType: enum names and numbers, and the numpy type of each.
_TRITON_TYPES: dict[str, tuple[int, Any]] = {
    name: (number, V2_TO_NUMPY[CONFIG_TO_V2[name]].type) for name, number in (
        ("TYPE_BOOL", 1), ("TYPE_UINT8", 2), ("TYPE_UINT16", 3), ("TYPE_UINT32", 4), ("TYPE_UINT64", 5),
        ("TYPE_INT8", 6), ("TYPE_INT16", 7), ("TYPE_INT32", 8), ("TYPE_INT64", 9), ("TYPE_FP16", 10),
        ("TYPE_FP32", 11), ("TYPE_FP64", 12), ("TYPE_STRING", 13))
}
_NUMBER_TO_NUMPY = {number: dtype for number, dtype in _TRITON_TYPES.values()}


# ---- errors ----


class TritonError(Exception):
    """An error a model puts in a response (`InferenceResponse(error=TritonError("..."))`), with a Triton code.

    An exception here (Triton's is not) so that raising one from `execute` also works: the call then fails with
    this message and code.
    """

    UNKNOWN = 0
    INTERNAL = 1
    NOT_FOUND = 2
    INVALID_ARG = 3
    UNAVAILABLE = 4
    UNSUPPORTED = 5
    ALREADY_EXISTS = 6
    CANCELLED = 7

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self._message = str(message)
        # Triton reports INTERNAL when no code is given; inferd answers such a response as a bad request
        # (the model judged the request), so it remembers whether the model chose a code.
        self.code_given = code is not None
        self._code = TritonError.INTERNAL if code is None else int(code)

    def message(self) -> str:
        return self._message

    def code(self) -> int:
        return self._code

    def __repr__(self) -> str:
        return f"TritonError({self._message!r}, code={self._code})"


class TritonModelException(Exception):
    """What the utilities raise when a model uses them wrongly (Triton's name for it)."""


class AutoCompleteError(TritonModelException, ValueError):
    """What `ModelConfig`'s methods raise where Triton raises ValueError: catching either name works."""


# ---- tensors ----


class Tensor:
    """A named numpy array: what requests hold and responses are built from."""

    def __init__(self, name: str, data: Any) -> None:
        if not isinstance(name, str):
            raise TritonModelException(f"tensor name must be a string, got {type(name).__name__}")
        array = data if isinstance(data, np.ndarray) else np.asarray(data)
        if array.dtype.kind == "U":  # strings travel as BYTES: UTF-8 bytes in an object array
            array = np.array([s.encode("utf-8") for s in array.flat], dtype=np.object_).reshape(array.shape)
        self._name = name
        self._array = array

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array

    def shape(self) -> list[int]:
        return list(self._array.shape)

    def triton_dtype(self) -> int:
        return numpy_to_triton_type(self._array.dtype)

    def is_cpu(self) -> bool:
        return True

    def to_dlpack(self) -> Any:
        """A DLPack capsule of the data (numeric tensors only), e.g. for `torch.utils.dlpack.from_dlpack`."""
        if self._array.dtype.hasobject:
            raise TritonModelException(f"tensor '{self._name}' holds BYTES, which DLPack cannot carry")
        array: Any = self._array
        return array.__dlpack__()

    @staticmethod
    def from_dlpack(name: str, capsule: Any) -> Tensor:
        """A tensor from anything DLPack (a torch tensor, or the capsule `torch.utils.dlpack.to_dlpack` made)."""
        source = capsule if hasattr(capsule, "__dlpack__") else _Capsule(capsule)
        try:
            return Tensor(name, np.from_dlpack(source))
        except (TypeError, RuntimeError, BufferError) as exc:
            raise TritonModelException(f"cannot read tensor '{name}' from DLPack: {exc}") from None

    def __repr__(self) -> str:
        return f"Tensor({self._name!r}, shape={list(self._array.shape)}, dtype={self._array.dtype})"


class _Capsule:
    """A bare DLPack capsule wearing the protocol numpy's `from_dlpack` asks for (CPU memory only)."""

    def __init__(self, capsule: Any) -> None:
        self._capsule = capsule

    def __dlpack__(self, **_: Any) -> Any:
        return self._capsule

    def __dlpack_device__(self) -> tuple[int, int]:
        return (1, 0)  # kDLCPU


# ---- requests and responses ----


class InferenceResponse:
    """A model's answer to one request: output tensors, or an error."""

    def __init__(self, output_tensors: Sequence[Tensor] | None = None, error: TritonError | None = None,
                 parameters: dict[str, Any] | str | None = None) -> None:
        self._tensors = list(output_tensors or [])
        for tensor in self._tensors:
            if not isinstance(tensor, Tensor):
                raise TritonModelException(f"output_tensors must hold pb_utils.Tensor, got {type(tensor).__name__}")
        if error is not None and not isinstance(error, TritonError):
            raise TritonModelException(f"error must be a pb_utils.TritonError, got {type(error).__name__}")
        self._error = error
        self._parameters = parameters if isinstance(parameters, str) else json.dumps(parameters or {})

    def output_tensors(self) -> list[Tensor]:
        return list(self._tensors)

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> TritonError | None:
        return self._error

    def parameters(self) -> str:
        return self._parameters


class InferenceResponseSender:
    """Collects what a default-mode model sends instead of returning it (one final response per request)."""

    def __init__(self) -> None:
        self.responses: list[InferenceResponse] = []
        self.closed = False

    def send(self, response: InferenceResponse | None = None, flags: int = 0) -> None:
        if self.closed:
            raise TritonModelException("the final response of this request was already sent")
        if response is not None:
            if self.responses:
                raise TritonModelException("this model is not decoupled: it sends one response per request")
            self.responses.append(response)
        if flags & TRITONSERVER_RESPONSE_COMPLETE_FINAL:
            self.closed = True

    def is_cancelled(self) -> bool:
        return False


class InferenceRequest:
    """One request as `execute` receives it: the batch's input tensors.

    Building one yourself (`InferenceRequest(model_name=..., inputs=..., requested_output_names=...)`) is Triton's
    BLS: `exec()` runs it on the server (`model_version` -1 is the latest; `timeout` in microseconds is the
    request's queue timeout, as in Triton).
    """

    def __init__(self, inputs: Iterable[Tensor] = (), requested_output_names: Iterable[str] = (),
                 model_name: str = "", model_version: int = -1, request_id: str = "", correlation_id: int | str = 0,
                 flags: int = 0, timeout: int = 0, parameters: dict[str, Any] | str | None = None,
                 **_: Any) -> None:
        self._inputs = list(inputs)
        self._requested = list(requested_output_names)
        self.model_name = model_name
        self.model_version = model_version
        self._request_id = request_id
        self._correlation_id = correlation_id
        self._flags = flags
        self._timeout = timeout
        self._parameters = parameters if isinstance(parameters, str) else json.dumps(parameters or {})
        self._sender = InferenceResponseSender()

    def inputs(self) -> list[Tensor]:
        return list(self._inputs)

    def requested_output_names(self) -> list[str]:
        return list(self._requested)

    def request_id(self) -> str:
        return self._request_id

    def correlation_id(self) -> int | str:
        return self._correlation_id

    def flags(self) -> int:
        return self._flags

    def timeout(self) -> int:
        return self._timeout

    def parameters(self) -> str:
        return self._parameters

    def is_cancelled(self) -> bool:
        return False

    def get_response_sender(self) -> InferenceResponseSender:
        return self._sender

    def set_release_flags(self, flags: int) -> None:
        if flags & TRITONSERVER_REQUEST_RELEASE_RESCHEDULE:
            raise TritonModelException("request rescheduling (decoupled mode) is not supported by inferd")

    def exec(self, decoupled: bool = False) -> InferenceResponse:
        """Run this request on the model it names (BLS); errors come back in the response, as in Triton."""
        if decoupled:
            raise TritonModelException("decoupled BLS requests are not supported by inferd")
        if not self.model_name:
            raise TritonModelException("a BLS InferenceRequest needs a model_name")
        from inferd.instances.bls import BlsRequest, call_model
        from inferd.types import InferError

        version = str(self.model_version)
        request = BlsRequest(str(self.model_name), "" if version == "-1" else version,
                             {tensor.name(): tensor.as_numpy() for tensor in self._inputs}, list(self._requested),
                             int(self._timeout or 0))
        try:
            outputs = call_model(request)
        except InferError as exc:
            return InferenceResponse(error=TritonError(exc.message, _ERROR_CODES.get(exc.kind.name,
                                                                                     TritonError.INTERNAL)))
        return InferenceResponse([Tensor(name, value) for name, value in outputs.items()])

    def async_exec(self, decoupled: bool = False) -> Any:
        """An awaitable of `exec()`'s response: it runs on a thread, so several may be in flight at once."""
        import asyncio

        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise TritonModelException("async_exec must be awaited inside an async execute") from None
        return loop.run_in_executor(None, self.exec, decoupled)


# inferd's error kinds (by name) as TritonError codes, for BLS responses.
_ERROR_CODES = {
    "NOT_FOUND": TritonError.NOT_FOUND,
    "INVALID_ARGUMENT": TritonError.INVALID_ARG,
    "TOO_LARGE": TritonError.INVALID_ARG,
    "UNAVAILABLE": TritonError.UNAVAILABLE,
    "UNSUPPORTED": TritonError.UNSUPPORTED,
    "CANCELLED": TritonError.CANCELLED,
}


def get_input_tensor_by_name(request: InferenceRequest, name: str) -> Tensor | None:
    for tensor in request.inputs():
        if tensor.name() == name:
            return tensor
    return None


def get_output_tensor_by_name(response: InferenceResponse, name: str) -> Tensor | None:
    for tensor in response.output_tensors():
        if tensor.name() == name:
            return tensor
    return None


# ---- the model config (a dict: json.loads(args["model_config"])) ----


def get_input_config_by_name(model_config: dict[str, Any], name: str) -> dict[str, Any] | None:
    for entry in model_config.get("input", []):
        if entry.get("name") == name:
            return entry
    return None


def get_output_config_by_name(model_config: dict[str, Any], name: str) -> dict[str, Any] | None:
    for entry in model_config.get("output", []):
        if entry.get("name") == name:
            return entry
    return None


def using_decoupled_model_transaction_policy(model_config: dict[str, Any]) -> bool:
    return bool(model_config.get("model_transaction_policy", {}).get("decoupled", False))


class ModelConfig:
    """The argument of Triton's `auto_complete_config`: the model's config (Triton's JSON form) that the model
    completes. inferd calls `auto_complete_config` in a short-lived process of its own, never in the server, and
    merges back what may be completed: `max_batch_size`, inputs and outputs that are missing, `dynamic_batching`
    and `model_transaction_policy`. The checks and messages follow Triton's python backend; where Triton raises
    ValueError, the exception here is both a `TritonModelException` and a `ValueError`.
    """

    def __init__(self, model_config: dict[str, Any] | str) -> None:
        self._config: dict[str, Any] = json.loads(model_config) if isinstance(model_config, str) else model_config
        self._config.setdefault("input", [])
        self._config.setdefault("output", [])
        self._config.setdefault("max_batch_size", 0)

    def _model(self) -> str:
        return str(self._config.get("name", ""))

    def as_dict(self) -> dict[str, Any]:
        """The configuration as a dict (Triton gives read access; inferd reads back only what may be completed)."""
        return self._config

    def set_max_batch_size(self, max_batch_size: int) -> None:
        """Set max_batch_size; a config that already allows a larger batch is an error (a smaller one stays)."""
        current = int(self._config.get("max_batch_size", 0))
        if current > max_batch_size:
            raise AutoCompleteError(f"configuration specified max_batch_size {current}, but in auto-complete-config "
                                    f"function for model '{self._model()}' specified max_batch_size "
                                    f"{max_batch_size}")
        self._config["max_batch_size"] = int(max_batch_size)

    def set_dynamic_batching(self) -> None:
        """Use the dynamic batcher unless the config chose another scheduler."""
        for scheduler in ("sequence_batching", "ensemble_scheduling"):
            if scheduler in self._config:
                raise AutoCompleteError(f"Configuration specified scheduling_choice as '{scheduler}', but "
                                        f"auto-complete-config function for model '{self._model()}' tries to set "
                                        "scheduling_choice as 'dynamic_batching'")
        self._config.setdefault("dynamic_batching", {})

    def add_input(self, input: dict[str, Any]) -> None:  # Triton's parameter name
        """Add an input, or complete the config's input of that name; conflicting properties are an error."""
        self._add("input", input, ("name", "data_type", "dims", "optional"))

    def add_output(self, output: dict[str, Any]) -> None:
        """Add an output, or complete the config's output of that name; conflicting properties are an error."""
        self._add("output", output, ("name", "data_type", "dims"))

    def _add(self, kind: str, tensor: dict[str, Any], allowed: tuple[str, ...]) -> None:
        if not isinstance(tensor, dict):
            raise AutoCompleteError(f"{kind} in auto-complete-config function for model '{self._model()}' must be "
                                    f"a dict, got {type(tensor).__name__}")
        model = self._model()
        name = tensor.get("name")
        extra = [key for key in tensor if key not in allowed]
        if extra:
            listed = ", ".join(f"'{key}'" for key in allowed[:-1]) + f" and '{allowed[-1]}'"
            raise AutoCompleteError(f"{kind} '{name}' in auto-complete-config function for model '{model}' contains "
                                    f"property other than {listed}.")
        for required in ("name", "data_type", "dims"):
            if required not in tensor:
                which = f"{kind} '{name}'" if required != "name" else kind
                raise AutoCompleteError(f"{which} in auto-complete-config function for model '{model}' is missing "
                                        f"'{required}' property.")
        for current in self._config.setdefault(kind, []):
            if current.get("name") != name:
                continue
            current_type = current.get("data_type", "TYPE_INVALID")
            if current_type != "TYPE_INVALID" and current_type != tensor["data_type"]:
                raise AutoCompleteError(f"unable to load model '{model}', configuration expects datatype "
                                        f"{current_type} for {kind} '{name}', model provides {tensor['data_type']}")
            current_dims = list(current.get("dims") or [])
            if current_dims and current_dims != list(tensor["dims"]):
                raise AutoCompleteError(f"model '{model}', tensor '{name}': the model expects dims "
                                        f"{list(tensor['dims'])} but the model configuration specifies dims "
                                        f"{current_dims}")
            if "optional" in current and "optional" in tensor and current["optional"] != tensor["optional"]:
                raise AutoCompleteError(f"model '{model}', tensor '{name}': the model expects optional "
                                        f"{tensor['optional']} but the model configuration specifies optional "
                                        f"{current['optional']}")
            current["data_type"] = tensor["data_type"]
            current["dims"] = list(tensor["dims"])
            if "optional" in tensor:
                current["optional"] = tensor["optional"]
            return
        self._config[kind].append(dict(tensor))

    def set_model_transaction_policy(self, transaction_policy_dict: dict[str, Any]) -> None:
        """Set `model_transaction_policy` (only `decoupled`; inferd then refuses a decoupled model at load)."""
        model = self._model()
        for key in transaction_policy_dict:
            if key != "decoupled":
                raise AutoCompleteError(f"model transaction property in auto-complete-config function for model "
                                        f"'{model}' contains property other than 'decoupled'.")
        policy = self._config.setdefault("model_transaction_policy", {})
        if "decoupled" in transaction_policy_dict:
            wanted = transaction_policy_dict["decoupled"]
            if "decoupled" in policy and policy["decoupled"] != wanted:
                raise AutoCompleteError(f"trying to change decoupled property in auto-complete-config for model "
                                        f"'{model}', which is already set to '{policy['decoupled']}'.")
            policy["decoupled"] = wanted


# ---- datatypes ----


def triton_string_to_numpy(triton_type_string: str) -> Any:
    """The numpy type of a config data type name (`"TYPE_FP32"` -> `np.float32`; `"TYPE_STRING"` -> object)."""
    try:
        return _TRITON_TYPES[triton_type_string][1]
    except KeyError:
        raise TritonModelException(f"unknown Triton data type '{triton_type_string}'") from None


def triton_to_numpy_type(data_type: int) -> Any:
    """The numpy type of a `DataType` enum number (11 -> `np.float32`)."""
    try:
        return _NUMBER_TO_NUMPY[int(data_type)]
    except KeyError:
        raise TritonModelException(f"unknown Triton data type {data_type}") from None


def numpy_to_triton_type(data_type: Any) -> int:
    """The `DataType` enum number of a numpy dtype (strings and objects are TYPE_STRING)."""
    dtype = np.dtype(data_type)
    if dtype.kind in "OSU":
        return _TRITON_TYPES["TYPE_STRING"][0]
    for number, numpy_type in _TRITON_TYPES.values():
        if np.dtype(numpy_type) == dtype:
            return number
    raise TritonModelException(f"no Triton data type for numpy dtype {dtype}")


def serialize_byte_tensor(input_tensor: np.ndarray) -> np.ndarray:
    """BYTES elements as Triton lays them out: each a 4-byte little-endian length, then its bytes (uint8 array)."""
    parts: list[bytes] = []
    for item in np.asarray(input_tensor, dtype=np.object_).flat:
        raw = item if isinstance(item, bytes) else str(item).encode("utf-8")
        parts.append(len(raw).to_bytes(4, "little") + raw)
    return np.frombuffer(b"".join(parts), dtype=np.uint8)


def deserialize_bytes_tensor(encoded_tensor: bytes) -> np.ndarray:
    """The inverse of `serialize_byte_tensor`: a flat object array of bytes."""
    data = bytes(encoded_tensor)
    items: list[bytes] = []
    offset = 0
    while offset < len(data):
        size = int.from_bytes(data[offset:offset + 4], "little")
        offset += 4
        items.append(data[offset:offset + size])
        offset += size
    return np.array(items, dtype=np.object_)


# ---- logging ----


class LogLevel(enum.IntEnum):
    INFO = 0
    WARNING = 1
    ERROR = 2
    VERBOSE = 3


_log = logging.getLogger("triton_python_backend_utils")
_LEVELS = {LogLevel.INFO: logging.INFO, LogLevel.WARNING: logging.WARNING, LogLevel.ERROR: logging.ERROR,
           LogLevel.VERBOSE: logging.DEBUG}


class Logger:
    """Triton's model logger, writing to the instance process's log (the server's standard error)."""

    @staticmethod
    def log(message: str, level: LogLevel = LogLevel.INFO) -> None:
        _log.log(_LEVELS.get(LogLevel(level), logging.INFO), "%s", message)

    @staticmethod
    def log_info(message: str) -> None:
        _log.info("%s", message)

    @staticmethod
    def log_warn(message: str) -> None:
        _log.warning("%s", message)

    @staticmethod
    def log_error(message: str) -> None:
        _log.error("%s", message)

    @staticmethod
    def log_verbose(message: str) -> None:
        _log.debug("%s", message)
