"""Core types shared by every layer: datatypes, requests, responses and the one error type."""

from __future__ import annotations

import enum
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "CONFIG_TO_V2",
    "MESSAGE_TENSOR",
    "V2_TO_CONFIG",
    "V2_TO_NUMPY",
    "ErrorKind",
    "InferError",
    "InferenceRequest",
    "InferenceResponse",
    "RequestedOutput",
    "SharedMemoryRef",
    "Tensors",
    "datatype_of",
    "describe_error",
    "numpy_dtype",
    "public_error_text",
]


# Named tensors: what models take and give, and what the core passes around.
Tensors = dict[str, np.ndarray]

# The one-element object tensor that carries a whole protocol message (operation, message) to a model that takes
# messages rather than tensors (Seldon's wrapper classes), and its answer back.
MESSAGE_TENSOR = "__message__"


class ErrorKind(enum.Enum):
    """What went wrong, and how each protocol says it (the only place that maps errors to status codes)."""

    INVALID_ARGUMENT = (400, "INVALID_ARGUMENT")
    NOT_FOUND = (404, "NOT_FOUND")
    UNAVAILABLE = (503, "UNAVAILABLE")
    INTERNAL = (500, "INTERNAL")
    UNAUTHENTICATED = (401, "UNAUTHENTICATED")
    PERMISSION_DENIED = (403, "PERMISSION_DENIED")
    RESOURCE_EXHAUSTED = (429, "RESOURCE_EXHAUSTED")
    TOO_LARGE = (413, "RESOURCE_EXHAUSTED")
    CANCELLED = (499, "CANCELLED")
    DEADLINE_EXCEEDED = (504, "DEADLINE_EXCEEDED")
    UNSUPPORTED = (400, "UNIMPLEMENTED")  # a feature this server lacks (as Triton: 400 over HTTP)

    @property
    def http_status(self) -> int:
        return self.value[0]

    @property
    def grpc_code_name(self) -> str:
        """Name of the member of `grpc.StatusCode` (kept as a name so this module needs no grpc)."""
        return self.value[1]


class InferError(Exception):
    """The one error type of the data plane; frontends turn it into their protocol's error form.

    `retry_after`: seconds a refused client should wait (HTTP `Retry-After`, set on RESOURCE_EXHAUSTED refusals of
    a tenant's limits); `reason`: a short machine-readable cause where one is useful (which limit refused).
    """

    retry_after: int | None = None
    reason: str = ""

    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message

    @classmethod
    def invalid(cls, message: str) -> InferError:
        return cls(ErrorKind.INVALID_ARGUMENT, message)

    @classmethod
    def not_found(cls, message: str) -> InferError:
        return cls(ErrorKind.NOT_FOUND, message)

    @classmethod
    def unavailable(cls, message: str) -> InferError:
        return cls(ErrorKind.UNAVAILABLE, message)

    @classmethod
    def internal(cls, message: str) -> InferError:
        return cls(ErrorKind.INTERNAL, message)


def describe_error(exc: BaseException) -> str:
    """An exception in one line for a message: its type and text (`ValueError: bad shape`)."""
    return f"{type(exc).__name__}: {exc}"


# An absolute path of two components or more (a home-relative ~/... and a file:// URL too), not preceded by a word
# character or a slash, so "a/b", "x // y" and "http://host/" stay.
_SEGMENT = r"[^\s/'\"`()\[\]{}<>,;:|=]+"
_PATH = re.compile(rf"(?<![\w.~/-])(?:file://)?~?/(?:{_SEGMENT}/)+(?:{_SEGMENT})?")
_SECRET_MIN_CHARS = 7  # shorter values ("1", "true", "C.UTF-8") would mask ordinary words
MASK = "***"


class _Environment:
    """The environment's values at start, longest first, as one pattern (compiled once)."""

    pattern: re.Pattern[str] | None = None

    @classmethod
    def load(cls, environ: Mapping[str, str]) -> re.Pattern[str] | None:
        # Values that are absolute paths are left to _PATH: masking a path's prefix would leave "***/b/c" for the
        # path pattern to miss.
        values = sorted({value for value in environ.values()
                         if len(value) >= _SECRET_MIN_CHARS and not value.startswith(("/", "~/"))},
                        key=len, reverse=True)
        return re.compile("|".join(map(re.escape, values))) if values else None


_Environment.pattern = _Environment.load(os.environ)


def public_error_text(text: str, environ: Mapping[str, str] | None = None) -> str:
    """A failure's text as clients may read it: on one line, the values of the server's environment variables
    (as they were at start; `environ` instead when given) of 7 characters or more masked, and absolute paths
    reduced to their last component (`open /srv/models/m/1/weights.bin` -> `open weights.bin`). The full text is
    for the server's log only."""
    text = " ".join(text.split())
    pattern = _Environment.pattern if environ is None else _Environment.load(environ)
    if pattern is not None:
        text = pattern.sub(MASK, text)
    return _PATH.sub(_last_component, text)


def _last_component(match: re.Match[str]) -> str:
    return match.group().rstrip("/").rpartition("/")[2]


# V2 datatype names <-> numpy. BYTES tensors are object arrays of `bytes`.
V2_TO_NUMPY: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(np.object_),
}
_NUMPY_TO_V2: dict[np.dtype[Any], str] = {dt: name for name, dt in V2_TO_NUMPY.items()}

# ModelConfig DataType enum names (model_config.proto) <-> V2 names.
CONFIG_TO_V2: dict[str, str] = {
    "TYPE_BOOL": "BOOL",
    "TYPE_UINT8": "UINT8",
    "TYPE_UINT16": "UINT16",
    "TYPE_UINT32": "UINT32",
    "TYPE_UINT64": "UINT64",
    "TYPE_INT8": "INT8",
    "TYPE_INT16": "INT16",
    "TYPE_INT32": "INT32",
    "TYPE_INT64": "INT64",
    "TYPE_FP16": "FP16",
    "TYPE_FP32": "FP32",
    "TYPE_FP64": "FP64",
    "TYPE_STRING": "BYTES",
    "TYPE_BF16": "BF16",
}
V2_TO_CONFIG: dict[str, str] = {v: k for k, v in CONFIG_TO_V2.items()}


def numpy_dtype(datatype: str) -> np.dtype[Any]:
    """The numpy dtype for a V2 datatype name, or INVALID_ARGUMENT."""
    try:
        return V2_TO_NUMPY[datatype]
    except KeyError:
        raise InferError.invalid(f"unsupported datatype '{datatype}'") from None


def datatype_of(array: np.ndarray) -> str:
    """The V2 datatype name of an array (strings of any kind count as BYTES)."""
    dtype = array.dtype
    name = _NUMPY_TO_V2.get(dtype)
    if name is not None:
        return name
    if not dtype.isnative:  # a big-endian array is the same datatype; encoders write it little-endian
        name = _NUMPY_TO_V2.get(dtype.newbyteorder("="))
        if name is not None:
            return name
    if dtype.kind in "SU":
        return "BYTES"
    raise InferError.internal(f"no V2 datatype for numpy dtype {array.dtype}")


@dataclass(slots=True, frozen=True)
class SharedMemoryRef:
    """Where a tensor's bytes lie in a registered shared-memory region (Triton's `shared_memory_*` parameters)."""

    region: str
    byte_size: int
    offset: int = 0


@dataclass(slots=True)
class RequestedOutput:
    name: str
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class InferenceRequest:
    """One inference call as every frontend hands it to the core.

    `inputs` are numpy arrays in the client's shape; `datatypes` records the V2 datatype the client declared for
    each (needed for BYTES and for checks against the model config).
    """

    model_name: str
    inputs: dict[str, np.ndarray]
    datatypes: dict[str, str]
    model_version: str = ""
    id: str = ""
    outputs: list[RequestedOutput] | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    # Inputs whose data lies in shared memory (their shape and where), read by the core into `inputs`.
    shared_inputs: dict[str, tuple[tuple[int, ...], SharedMemoryRef]] = field(default_factory=dict)
    # A whole protocol message instead of tensors (a Seldon call), and what to do with it ("predict", "route", ...).
    message: Any = None
    operation: str = ""


# The response header (HTTP) / trailing metadata key (gRPC) that names the traffic variant that served a request.
VARIANT_HEADER = "x-inferd-variant"


@dataclass(slots=True)
class InferenceResponse:
    model_name: str
    model_version: str
    outputs: dict[str, np.ndarray]
    id: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)
    # Outputs the core wrote into shared memory: frontends send their datatype and shape, not their data.
    shared_outputs: dict[str, SharedMemoryRef] = field(default_factory=dict)
    # The answer to a message request (see InferenceRequest.message).
    message: Any = None
    # The traffic variant that served it ("" when its model has no split): the X-Inferd-Variant header.
    variant: str = ""
