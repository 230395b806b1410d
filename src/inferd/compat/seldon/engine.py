"""Seldon's protocol for every model `inferd serve` serves, answered as Seldon Core's engine (executor) answers it.

The engine's side, not the wrapper's (protocol.py is the wrapper's: `inferd microservice`): every answer's `meta`
has a `puid` (the request's, else a new one as the engine makes them: 130 random bits in base 32), the request's
`tags`, `routing` and `metrics`, and `requestPath` with the model that answered (`{name: "name:version"}`); errors
are the engine's envelope `{"status": {"code": HTTP status, "info", "reason", "status": "FAILURE"}}`.

Models that take whole messages (Seldon wrapper classes, graphs) get the SeldonMessage itself. For models that take
tensors, a SeldonMessage becomes their inputs (`decode_tensors`) and their outputs a SeldonMessage
(`encode_tensors`):

- `data` (`ndarray`, or `tensor` {shape, values}) to a model with one input: the whole array is that input; a
  single instance (an array of the input's own rank) is a batch of one for a batching model.
- several inputs and `names` that are all input names: the array's columns, by name (a rows x names table, as
  tabular clients send it); each column is one input of one value per row.
- several inputs otherwise: by position, the array's first axis running over the model's inputs in order
  (`ndarray: [INPUT0's data, INPUT1's data]`).
- `strData`, `binData` (base64) or `jsonData` (as its JSON text): a one-element BYTES tensor, for a model whose
  only input is BYTES; any other model answers 400.

The answer's `data` has the request's form (ndarray in, ndarray out; tensor in, tensor out — an ndarray where the
values cannot be a tensor: strings, or several outputs of different shapes). One output: its array, `names` its
columns `t:0, t:1, ...` (as Seldon's wrapper and its SKLearn server name them). Several outputs: one value per row
each (shape [rows] or [rows, 1]) makes a rows x outputs table; otherwise the first axis runs over the outputs, as
for inputs; `names` are the output names. A `strData` / `binData` / `jsonData` request whose model answers one
BYTES element gets it back under the same key.
"""

from __future__ import annotations

import base64
import binascii
import math
import random
import secrets
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Protocol

import numpy as np
import orjson
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from ...types import InferError, numpy_dtype
from .protocol import SeldonError

__all__ = ["Decoded", "FeedbackCounts", "Spec", "answer_meta", "decode_tensors", "encode_tensors", "error_body",
           "feedback_puid", "new_puid", "with_puid"]

Message = dict[str, Any]
_PUIDS = random.Random(secrets.randbits(128))
_FROM_RFC4648 = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", b"0123456789abcdefghijklmnopqrstuv")
_PAYLOADS = ("strData", "binData", "jsonData")


class Spec(Protocol):
    """What the codec needs of a model's input: the model's TensorSpec has it."""

    @property
    def name(self) -> str: ...

    @property
    def datatype(self) -> str: ...

    @property
    def dims(self) -> tuple[int, ...]: ...


def new_puid() -> str:
    """A prediction's unique id as Seldon's engine makes it: 130 random bits in base 32 (26 characters of
    0-9a-v, Java's BigInteger.toString(32) digits; base64's base-32 letters map onto them one for one)."""
    bits = _PUIDS.getrandbits(136).to_bytes(17, "big")  # not a secret: a fast generator seeded from one
    return base64.b32encode(bits)[:26].translate(_FROM_RFC4648).decode("ascii")


def error_body(status: int, info: str) -> Message:
    """The engine's error envelope for an HTTP status."""
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Error"
    return {"status": {"code": status, "info": info, "reason": reason, "status": "FAILURE"}}


def with_puid(message: Any) -> tuple[Message, str]:
    """The request with `meta.puid` (its own, else a new one) and that puid; a body that is not a SeldonMessage
    (an object with an object `meta`) is a 400."""
    if not isinstance(message, dict):
        raise SeldonError(f"Invalid request data type: a SeldonMessage is a JSON object, got {_kind(message)}")
    meta = message.get("meta")
    if meta is None:
        meta = {}
    elif not isinstance(meta, dict):
        raise SeldonError("'meta' must be a JSON object")
    puid = meta.get("puid")
    if not isinstance(puid, str) or not puid:
        puid = new_puid()
        message = {**message, "meta": {**meta, "puid": puid}}
    return message, puid


def feedback_puid(feedback: Any) -> str:
    """Check a Feedback message ({request, response, reward, truth}); the puid it is about (its response's, else
    its request's, else a new one)."""
    if not isinstance(feedback, dict):
        raise SeldonError(f"Invalid feedback: a Feedback message is a JSON object, got {_kind(feedback)}")
    for key in ("request", "response", "truth"):
        part = feedback.get(key)
        if part is not None and not isinstance(part, dict):
            raise SeldonError(f"'{key}' must be a SeldonMessage (a JSON object)")
    reward = feedback.get("reward")
    if reward is not None and (isinstance(reward, bool) or not isinstance(reward, (int, float))):
        raise SeldonError("'reward' must be a number")
    for key in ("response", "request"):
        meta = (feedback.get(key) or {}).get("meta")
        if isinstance(meta, dict) and isinstance(meta.get("puid"), str) and meta["puid"]:
            return str(meta["puid"])
    return new_puid()


def answer_meta(request_meta: Any, puid: str, request_path: Mapping[str, str]) -> Message:
    """The engine's answer meta: puid, the request's tags / routing / metrics, and the request path so far plus
    the node that answered."""
    meta = request_meta if isinstance(request_meta, dict) else {}
    given_path = meta.get("requestPath")
    return {
        "puid": puid,
        "tags": dict(meta["tags"]) if isinstance(meta.get("tags"), dict) else {},
        "routing": dict(meta["routing"]) if isinstance(meta.get("routing"), dict) else {},
        "requestPath": {**(given_path if isinstance(given_path, dict) else {}), **request_path},
        "metrics": list(meta["metrics"]) if isinstance(meta.get("metrics"), list) else [],
    }


# ---- SeldonMessage -> tensors ----

@dataclass(slots=True)
class Decoded:
    """A request's tensors, and the form it came in ("ndarray", "tensor", "strData", "binData", "jsonData")."""

    form: str
    inputs: dict[str, np.ndarray] = field(default_factory=dict)
    datatypes: dict[str, str] = field(default_factory=dict)

    def add(self, spec: Spec, array: np.ndarray) -> None:
        self.inputs[spec.name] = array
        self.datatypes[spec.name] = spec.datatype


def decode_tensors(message: Message, specs: Sequence[Spec], batching: bool, model: str) -> Decoded:
    """The inputs of a model that takes tensors (`specs`, in the model's order) from a SeldonMessage."""
    if "data" not in message:
        for key in _PAYLOADS:
            if key in message:
                return _payload(message, key, specs, batching, model)
        raise SeldonError("Invalid request data type: a SeldonMessage needs 'data', 'strData', 'binData' or "
                          "'jsonData'")
    data = message["data"]
    if not isinstance(data, dict):
        raise SeldonError("'data' must be a JSON object with 'ndarray' or 'tensor'")
    names = data.get("names")
    if names is not None and not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        raise SeldonError("'names' must be a list of strings")
    form, values = _data_values(data)
    if not specs:
        raise SeldonError(f"model '{model}' declares no inputs")
    decoded = Decoded(form)
    if len(specs) == 1:
        decoded.add(specs[0], _as_input(specs[0], values, batching, form))
    elif names and set(names) <= {s.name for s in specs}:
        _columns(decoded, specs, names, values, batching)
    else:
        _positions(decoded, specs, values, batching, model, form)
    return decoded


def _data_values(data: Message) -> tuple[str, Any]:
    """("ndarray", nested lists) or ("tensor", an array of its values in its shape)."""
    if "tensor" in data:
        tensor = data["tensor"]
        if not isinstance(tensor, dict) or not isinstance(tensor.get("values"), list):
            raise SeldonError("'tensor' must be an object with 'shape' and 'values'")
        shape = tensor.get("shape", [len(tensor["values"])])
        if not (isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                for d in shape)):
            raise SeldonError("'tensor.shape' must be a list of non-negative integers")
        if math.prod(shape) != len(tensor["values"]):
            raise SeldonError(f"'tensor.shape' {shape} does not hold the {len(tensor['values'])} values given")
        values = tensor["values"]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            raise SeldonError("'tensor.values' must be numbers")
        return "tensor", np.array(values, dtype=np.float64).reshape(shape)
    if "ndarray" in data:
        return "ndarray", data["ndarray"]
    raise SeldonError("'data' must hold 'ndarray' or 'tensor'")


def _columns(decoded: Decoded, specs: Sequence[Spec], names: list[str], values: Any, batching: bool) -> None:
    """A rows x names table: each named column is one input, one value per row."""
    table = _array(values, "data")
    if table.ndim != 2 or table.shape[1] != len(names):
        raise SeldonError(f"with 'names' naming the model's inputs, 'data' must be a table of rows x {len(names)} "
                          f"columns; got shape {list(table.shape)}")
    rows = table.shape[0]
    for spec in specs:
        if spec.name in names:
            column = table[:, names.index(spec.name)]
            rank = len(spec.dims) if batching else max(len(spec.dims) - 1, 0)
            decoded.add(spec, _convert(spec, column.reshape((rows,) + (1,) * rank)))


def _positions(decoded: Decoded, specs: Sequence[Spec], values: Any, batching: bool, model: str,
               form: str) -> None:
    """The data's first axis runs over the model's inputs, in order."""
    ranked = isinstance(values, list) or (isinstance(values, np.ndarray) and values.ndim > 0)
    count = len(values) if ranked else 0  # a list's entries may differ in shape: inputs do
    if count != len(specs):
        expected = ", ".join(s.name for s in specs)
        raise SeldonError(f"model '{model}' takes {len(specs)} inputs ({expected}): give 'names' naming them as "
                          f"the columns of a table, or data whose first axis has one entry per input (got {count})")
    for spec, value in zip(specs, values, strict=True):
        decoded.add(spec, _as_input(spec, value, batching, form))


def _as_input(spec: Spec, value: Any, batching: bool, form: str) -> np.ndarray:
    array = _convert(spec, _array(value, spec.name) if spec.datatype != "BYTES" else _bytes_array(spec, value))
    if batching and array.ndim == len(spec.dims):  # one instance: a batch of one
        array = array[np.newaxis]
    return array


def _array(value: Any, what: str) -> np.ndarray:
    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise SeldonError(f"Invalid data for {what}: {exc}") from None
    if array.dtype == np.object_:
        raise SeldonError(f"Invalid data for {what}: the rows must be lists of the same length, of numbers or "
                          "strings")
    return array


def _bytes_array(spec: Spec, value: Any) -> np.ndarray:
    try:
        array = np.array(value if isinstance(value, list) else [value], dtype=np.object_)
        ragged = any(isinstance(v, (list, dict)) for v in array.flat) or (array.size == 0 and array.ndim != 1)
    except (ValueError, TypeError):
        ragged = True
    if ragged:
        raise SeldonError(f"Invalid data for {spec.name}: the rows must be lists of the same length, of strings")
    return array


def _convert(spec: Spec, array: np.ndarray) -> np.ndarray:
    """The array in the input's datatype; strings to a numeric input, or fractions to an integer one, are 400."""
    if spec.datatype == "BYTES":
        out = np.empty(array.shape, dtype=np.object_)
        out.flat[:] = [v if isinstance(v, bytes) else str(v).encode("utf-8") for v in array.flat]
        return out
    if array.dtype.kind in "OUS":
        raise SeldonError(f"input '{spec.name}' is {spec.datatype}, but the data holds strings")
    try:
        dtype = numpy_dtype(spec.datatype)
    except InferError as exc:
        raise SeldonError(exc.message) from None
    converted = array.astype(dtype)
    if array.dtype.kind == "f" and dtype.kind in "iub" and not np.array_equal(converted, array):
        raise SeldonError(f"input '{spec.name}' is {spec.datatype}, but the data holds fractions")
    return converted


def _payload(message: Message, key: str, specs: Sequence[Spec], batching: bool, model: str) -> Decoded:
    """strData / binData / jsonData as a one-element BYTES tensor for a model whose only input is BYTES."""
    if len(specs) != 1 or specs[0].datatype != "BYTES":
        takes = ", ".join(f"{s.name} ({s.datatype})" for s in specs) or "no inputs"
        raise SeldonError(f"'{key}' goes to a model with one BYTES input; model '{model}' takes {takes}: send "
                          "'data' instead")
    value = message[key]
    if key == "strData":
        if not isinstance(value, str):
            raise SeldonError("'strData' must be a string")
        payload = value.encode("utf-8")
    elif key == "binData":
        try:
            payload = base64.b64decode(value, validate=True)
        except (binascii.Error, TypeError, ValueError):
            raise SeldonError("'binData' is not valid base64") from None
    else:
        payload = orjson.dumps(value)
    spec = specs[0]
    element = np.empty((1,) * max(1, len(spec.dims) + (1 if batching else 0)), dtype=np.object_)
    element.flat[0] = payload
    decoded = Decoded(key)
    decoded.add(spec, element)
    return decoded


# ---- tensors -> SeldonMessage ----

def encode_tensors(outputs: Mapping[str, np.ndarray], form: str) -> Message:
    """The answer's payload (`data`, or the request's strData / binData / jsonData key) for a model's outputs."""
    if form in _PAYLOADS and len(outputs) == 1:
        (array,) = outputs.values()
        if array.dtype == np.object_ and array.size == 1:
            return {form: _payload_value(form, array.flat[0])}
    as_tensor = form == "tensor"
    if len(outputs) == 1:
        (array,) = outputs.values()
        names = [f"t:{i}" for i in range(array.shape[1])] if array.ndim == 2 else []
        return {"data": {"names": names, **_data(array, as_tensor)}}
    arrays = list(outputs.values())
    names = list(outputs)
    rows = {a.shape[0] if a.ndim else -1 for a in arrays}
    if len(rows) == 1 and -1 not in rows and all(a.ndim == 1 or (a.ndim == 2 and a.shape[1] == 1) for a in arrays):
        if as_tensor and all(a.dtype != np.object_ for a in arrays):
            table = np.column_stack([a.reshape(-1) for a in arrays])
            return {"data": {"names": names, **_data(table, True)}}
        columns = [_jsonable(a.reshape(-1)) for a in arrays]
        return {"data": {"names": names, "ndarray": [list(row) for row in zip(*columns, strict=True)]}}
    if as_tensor and len({a.shape for a in arrays}) == 1 and all(a.dtype != np.object_ for a in arrays):
        return {"data": {"names": names, **_data(np.stack(arrays), True)}}
    return {"data": {"names": names, "ndarray": [_jsonable(a) for a in arrays]}}


def _data(array: np.ndarray, as_tensor: bool) -> Message:
    if as_tensor and array.dtype != np.object_:
        return {"tensor": {"shape": list(array.shape), "values": array.ravel().tolist()}}
    return {"ndarray": _jsonable(array)}


def _jsonable(array: np.ndarray) -> Any:
    if array.dtype == np.object_:
        return np.vectorize(_text, otypes=[np.object_])(array).tolist() if array.size else array.tolist()
    return array.tolist()


def _text(value: Any) -> Any:
    return value.decode("utf-8", errors="replace") if isinstance(value, (bytes, bytearray)) else value


def _payload_value(form: str, value: Any) -> Any:
    raw = bytes(value) if isinstance(value, (bytes, bytearray)) else str(value).encode("utf-8")
    if form == "binData":
        return base64.b64encode(raw).decode("ascii")
    if form == "jsonData":
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            return raw.decode("utf-8", errors="replace")
    return raw.decode("utf-8", errors="replace")


def _kind(value: Any) -> str:
    return {list: "a list", str: "a string", type(None): "null"}.get(type(value), type(value).__name__)


class FeedbackCounts(Collector):
    """Feedback to models that take tensors (they have no `send_feedback`), counted per model under the names
    Seldon's wrapper counts feedback with: `seldon_api_model_feedback` and `seldon_api_model_feedback_reward`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, tuple[int, float]] = {}

    def record(self, model: str, reward: float) -> None:
        with self._lock:
            count, total = self._counts.get(model, (0, 0.0))
            self._counts[model] = (count + 1, total + reward)

    def get(self, model: str) -> tuple[int, float]:
        """(feedback messages, their rewards' sum) for a model."""
        with self._lock:
            return self._counts.get(model, (0, 0.0))

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            counts = dict(self._counts)
        for name, index, doc in (("seldon_api_model_feedback", 0, "Feedback messages sent to a model"),
                                 ("seldon_api_model_feedback_reward", 1, "Sum of the rewards of a model's feedback")):
            metric = Metric(name, doc, "counter")
            for model, values in sorted(counts.items()):
                metric.add_sample(name + "_total", {"model_name": model}, float(values[index]))
            yield metric
