"""SeldonMessages and tensors, both ways, for a Seldon graph: its V2 callers give and get tensors, its nodes that
are repository models take and give tensors, while the graph itself passes SeldonMessages between its nodes.

- V2 call -> message: one input is `data` (`tensor` {shape, values} for numbers, `ndarray` otherwise; a single
  BYTES element is `strData`); several inputs are `jsonData` {name: nested list}.
- message -> a model's inputs: `jsonData` {name: value} names them; otherwise the payload (`data` as an array,
  `strData` / `binData` as one BYTES element) is the model's one input (a model of several inputs needs
  `jsonData`), cast to the input's datatype.
- a model's outputs -> message: one output is `data` in the request's form (`tensor` when the request used one,
  else `ndarray`; BYTES as strings); several are `jsonData` {name: nested list}.
- the graph's answer -> V2 outputs: `data` is the one output `output` (numbers as FP64, as JSON numbers are);
  `strData` is one BYTES element; `binData` the bytes; `jsonData` its JSON text as one BYTES element.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import orjson

from ..compat.seldon.protocol import SeldonError, extract
from ..model import ServedModel
from ..types import InferError, Tensors, numpy_dtype

__all__ = ["Message", "graph_outputs", "model_inputs", "outputs_message", "tensors_message"]

Message = dict[str, Any]
OUTPUT = "output"


def _text(value: Any) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, (bytes, bytearray)) else str(value)


def _listed(array: np.ndarray) -> Any:
    if array.dtype == np.object_ or array.dtype.kind in "SU":
        return np.vectorize(_text, otypes=[object])(array).tolist() if array.size else array.tolist()
    return array.tolist()


def tensors_message(tensors: Tensors) -> Message:
    """A V2 call's inputs as the SeldonMessage the graph's first node gets."""
    if len(tensors) != 1:
        return {"jsonData": {name: _listed(array) for name, array in tensors.items()}}
    array = next(iter(tensors.values()))
    if array.dtype == np.object_ or array.dtype.kind in "SU":
        if array.size == 1:
            return {"strData": _text(array.reshape(-1)[0])}
        return {"data": {"ndarray": _listed(array)}}
    if array.dtype == np.bool_:
        return {"data": {"ndarray": array.tolist()}}
    # The values stay an array inside this process (JSON only where a message leaves it: a remote node).
    return {"data": {"tensor": {"shape": list(array.shape), "values": array.ravel()}}}


def _features(message: Any) -> Any:
    data = message.get("data") if isinstance(message, dict) else None
    tensor = data.get("tensor") if isinstance(data, dict) else None
    if isinstance(tensor, dict) and isinstance(tensor.get("values"), np.ndarray):  # made by this module
        try:
            return tensor["values"].reshape(tensor.get("shape", [-1]))
        except (TypeError, ValueError) as exc:
            raise InferError.invalid(f"Invalid data: {exc}") from None
    try:
        features, _, _ = extract(message)
    except SeldonError as exc:
        raise InferError.invalid(exc.info) from None
    return features


def _cast(model: ServedModel, name: str, value: Any) -> tuple[np.ndarray, str]:
    datatype = model.inputs[name].datatype
    if datatype == "BYTES":
        source = np.asarray(value, dtype=object) if not isinstance(value, (str, bytes)) else np.array([value],
                                                                                                     dtype=object)
        flat = [v if isinstance(v, bytes) else str(v).encode("utf-8") for v in source.ravel()]
        array = np.empty(len(flat), dtype=np.object_)
        array[:] = flat
        return array.reshape(source.shape), datatype
    try:
        return np.asarray(value, dtype=numpy_dtype(datatype)), datatype
    except (TypeError, ValueError) as exc:
        raise InferError.invalid(f"input '{name}' of model '{model.name}' takes {datatype}: {exc}") from None


def model_inputs(message: Any, model: ServedModel) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """A SeldonMessage as the inputs of a model that takes tensors."""
    features = _features(message)
    inputs: dict[str, np.ndarray] = {}
    datatypes: dict[str, str] = {}
    if isinstance(features, dict) and all(name in model.inputs for name in features) and features:
        for name, value in features.items():
            inputs[name], datatypes[name] = _cast(model, name, value)
        return inputs, datatypes
    if len(model.inputs) != 1:
        raise InferError.invalid(f"model '{model.name}' has {len(model.inputs)} inputs "
                                 f"({', '.join(model.inputs)}): a Seldon message for it names them in "
                                 "'jsonData' {name: value}")
    name = next(iter(model.inputs))
    if isinstance(features, (bytes, bytearray)):
        features = bytes(features)
    inputs[name], datatypes[name] = _cast(model, name, features)
    return inputs, datatypes


def outputs_message(outputs: Tensors, request: Any) -> Message:
    """A model's outputs as the SeldonMessage its node answers, in the request's data form."""
    if len(outputs) != 1:
        return {"jsonData": {name: _listed(array) for name, array in outputs.items()}}
    array = next(iter(outputs.values()))
    request_data = request.get("data") if isinstance(request, dict) else None
    numeric = array.dtype.kind in "iuf"
    if numeric and isinstance(request_data, dict) and isinstance(request_data.get("tensor"), dict):
        given = request_data["tensor"].get("values")
        values = array.ravel() if isinstance(given, np.ndarray) else array.ravel().tolist()
        return {"data": {"names": [], "tensor": {"shape": list(array.shape), "values": values}}}
    return {"data": {"names": [], "ndarray": _listed(array)}}


def graph_outputs(message: Any) -> Tensors:
    """The graph's answering SeldonMessage as the V2 outputs of the graph."""
    if not isinstance(message, dict):
        raise InferError.internal(f"the graph's answer is not a SeldonMessage: {str(message)[:200]}")
    one = np.empty(1, dtype=np.object_)
    if "data" in message:
        array = np.asarray(_features(message))
        if array.dtype.kind in "iufb":
            return {OUTPUT: array.astype(np.float64)}
        return {OUTPUT: np.vectorize(lambda v: _text(v).encode("utf-8"), otypes=[object])(array)
                if array.size else array.astype(object)}
    if "strData" in message:
        one[0] = str(message["strData"]).encode("utf-8")
    elif "binData" in message:
        one[0] = base64.b64decode(message["binData"])
    elif "jsonData" in message:
        one[0] = orjson.dumps(message["jsonData"], option=orjson.OPT_SERIALIZE_NUMPY)
    else:
        raise InferError.internal("the graph's answer has no data, strData, binData or jsonData")
    return {OUTPUT: one}
