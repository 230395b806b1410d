"""V2 (KServe Open Inference Protocol) JSON bodies with Triton's binary tensor data extension.

A request body is a JSON header, optionally followed by raw tensor bytes; `Inference-Header-Content-Length` says
where the JSON ends. Inputs with `parameters.binary_data_size` take their bytes from after the header in order.
Outputs go back as binary when the client asks for it (`binary_data` per output, `binary_data_output` for all).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from ...limits import DEFAULT_LIMITS, RequestLimits
from ...memory import SHM_REGION, shared_memory_parameters, shared_memory_ref
from ...types import InferenceRequest, InferenceResponse, InferError, RequestedOutput, SharedMemoryRef, datatype_of
from ..tensors import JsonConstant, check_shape, decode_list, decode_raw, encode_raw


@dataclass(slots=True)
class OutputOptions:
    """How the client wants outputs encoded."""

    binary_all: bool = False
    binary: frozenset[str] = frozenset()
    json_only: frozenset[str] = frozenset()

    def is_binary(self, name: str) -> bool:
        if name in self.binary:
            return True
        return self.binary_all and name not in self.json_only


_PLAIN = {float, int, bool, type(None)}


def _load_json(data: bytes | memoryview) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as first:
        # orjson rejects NaN / Infinity; Python's json (and Triton's parser) take them. Python's json also takes
        # lone surrogates, which orjson rightly refuses (checked below), and answers nesting past orjson's 1,024
        # levels with RecursionError: both are the client's error.
        try:
            value = json.loads(bytes(data), parse_constant=JsonConstant)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise InferError.invalid(f"failed to parse the request JSON: {first}") from None
        _check_text(value, first)
        return value


def _check_text(value: Any, first: orjson.JSONDecodeError) -> None:
    """INVALID_ARGUMENT when a string of a document from Python's json is not valid Unicode (orjson's rule).
    Iterative: the depth of the document cannot exhaust the stack."""
    stack = [value]
    while stack:
        item = stack.pop()
        if type(item) is str:
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise InferError.invalid(f"failed to parse the request JSON: {first}") from None
        elif type(item) is list:
            if not set(map(type, item)) <= _PLAIN:  # a list of numbers (most of a tensor's data) is skipped whole
                stack.extend(item)
        elif type(item) is dict:
            stack.extend(item)
            stack.extend(item.values())


def load_json_object(body: bytes) -> dict[str, Any]:
    """A JSON object body; an empty body counts as `{}` (tritonclient posts empty bodies)."""
    if not body.strip():
        return {}
    value = _load_json(body)
    if not isinstance(value, dict):
        raise InferError.invalid("the request body must be a JSON object")
    return value


def decode_infer_request(body: bytes, header_length: int | None, model_name: str, model_version: str,
                         limits: RequestLimits = DEFAULT_LIMITS) -> tuple[InferenceRequest, OutputOptions]:
    """The core's request from a V2 body. `limits` are checked on the declared shapes before any data is decoded;
    inputs placed in shared memory are left for the core to read (`shared_inputs`)."""
    header: bytes | memoryview = body
    if header_length is not None:
        if header_length < 0 or header_length > len(body):
            raise InferError.invalid(f"Inference-Header-Content-Length {header_length} is outside the request body "
                                     f"of {len(body)} bytes")
        header = memoryview(body)[:header_length]
    doc = _load_json(header)
    if not isinstance(doc, dict):
        raise InferError.invalid("the inference request must be a JSON object")
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list):
        raise InferError.invalid("the inference request must have an 'inputs' list")
    limits.check_input_count(len(raw_inputs))
    plain: bool | None = None  # the JSON has no `true` / `false` token (looked for at the first `data` input)
    offset = header_length or 0
    view = memoryview(body)
    inputs: dict[str, np.ndarray] = {}
    datatypes: dict[str, str] = {}
    shared: dict[str, tuple[tuple[int, ...], SharedMemoryRef]] = {}
    for item in raw_inputs:
        if not isinstance(item, dict):
            raise InferError.invalid("each entry of 'inputs' must be a JSON object")
        name = item.get("name")
        datatype = item.get("datatype")
        if not isinstance(name, str) or not isinstance(datatype, str):
            raise InferError.invalid("each input needs a string 'name' and 'datatype'")
        if name in inputs or name in shared:
            raise InferError.invalid(f"input '{name}' is given more than once")
        shape = check_shape(name, item.get("shape"))
        limits.check_elements(name, shape)
        params = item.get("parameters") or {}
        size = params.get("binary_data_size") if isinstance(params, dict) else None
        ref = shared_memory_ref(f"input '{name}'", params) if isinstance(params, dict) and params else None
        if ref is not None:
            if size is not None or "data" in item:
                raise InferError.invalid(f"input '{name}' is in shared memory ('{SHM_REGION}'): it must not have "
                                         "'data' or a 'binary_data_size' parameter too")
            shared[name] = (shape, ref)
            datatypes[name] = datatype
            continue
        if size is not None:
            if header_length is None:
                raise InferError.invalid(f"input '{name}' has binary_data_size but the request has no "
                                         "Inference-Header-Content-Length header")
            if type(size) is not int or size < 0 or offset + size > len(body):
                raise InferError.invalid(f"input '{name}': binary_data_size {size} runs past the end of the "
                                         f"request body ({len(body) - offset} bytes left)")
            array = decode_raw(name, datatype, shape, view[offset:offset + size])
            offset += size
        elif "data" in item:
            if datatype == "FP16":
                raise InferError.invalid(f"input '{name}': datatype FP16 cannot be given as JSON data; send it "
                                         "with the binary tensor data extension (binary_data_size)")
            if plain is None:
                # No boolean can hide in a number tensor's data: it packs in C (tensors.decode_list).
                end = len(body) if header_length is None else header_length
                plain = body.find(b"true", 0, end) < 0 and body.find(b"false", 0, end) < 0
            array = decode_list(name, datatype, shape, item["data"], plain=plain)
        else:
            raise InferError.invalid(f"input '{name}' has neither 'data' nor a 'binary_data_size' parameter")
        inputs[name] = array
        datatypes[name] = datatype
    if header_length is not None and offset != len(body):
        raise InferError.invalid(f"the request body has {len(body) - offset} bytes beyond its inputs' "
                                 "binary data: check Inference-Header-Content-Length and binary_data_size")
    options, requested = _output_options(doc)
    params = doc.get("parameters") or {}
    if not isinstance(params, dict):
        raise InferError.invalid("request 'parameters' must be a JSON object")
    request_id = doc.get("id", "")
    request = InferenceRequest(model_name, inputs, datatypes, model_version,
                               request_id if isinstance(request_id, str) else str(request_id), requested, params,
                               shared)
    return request, options


def _output_options(doc: dict[str, Any]) -> tuple[OutputOptions, list[RequestedOutput] | None]:
    params = doc.get("parameters") or {}
    binary_all = bool(params.get("binary_data_output", False)) if isinstance(params, dict) else False
    raw_outputs = doc.get("outputs")
    if raw_outputs is None:
        return OutputOptions(binary_all), None
    if not isinstance(raw_outputs, list):
        raise InferError.invalid("'outputs' must be a list")
    requested: list[RequestedOutput] = []
    binary, json_only = set(), set()
    for out in raw_outputs:
        if not isinstance(out, dict) or not isinstance(out.get("name"), str):
            raise InferError.invalid("each entry of 'outputs' needs a string 'name'")
        out_params = out.get("parameters") or {}
        if not isinstance(out_params, dict):
            raise InferError.invalid(f"output '{out['name']}': 'parameters' must be a JSON object")
        flag = out_params.get("binary_data")
        if flag is True:
            binary.add(out["name"])
        elif flag is False:
            json_only.add(out["name"])
        requested.append(RequestedOutput(out["name"], out_params))
    return OutputOptions(binary_all, frozenset(binary), frozenset(json_only)), requested


def _json_data(name: str, array: np.ndarray) -> Any:
    flat = array.ravel()
    if array.dtype == np.object_:
        try:
            return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in flat]
        except UnicodeDecodeError:
            raise InferError.invalid(f"output '{name}' holds bytes that are not valid UTF-8, which JSON cannot "
                                     "carry: request it with binary_data") from None
    return flat  # integers and booleans (floats are written by the caller, FP16 as FP32 numbers)


def _non_finite_tokens(flat: np.ndarray) -> bytes:
    """Float data with NaN or Inf as JSON's NaN / Infinity tokens (as Triton writes them; Python's json reads them)."""
    def token(v: float) -> str:
        if math.isnan(v):
            return "NaN"
        if math.isinf(v):
            return "Infinity" if v > 0 else "-Infinity"
        return repr(v)

    return ("[" + ",".join(token(v) for v in flat.tolist()) + "]").encode()


def encode_infer_response(response: InferenceResponse, options: OutputOptions) -> tuple[bytes, int | None]:
    """The response body, and the JSON header length when binary data follows it."""
    outputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    json_floats: list[np.ndarray] = []
    shared = response.shared_outputs
    binary = options.binary_all or options.binary  # no output asked as binary: no per-output question
    for name, array in response.outputs.items():
        entry: dict[str, Any] = {"name": name, "datatype": datatype_of(array), "shape": list(array.shape)}
        if shared and name in shared:  # the data is in the client's region already
            entry["parameters"] = shared_memory_parameters(shared[name])
        elif binary and options.is_binary(name):
            blob = encode_raw(array)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        elif array.dtype.kind == "f":
            entry["data"] = data = array.ravel() if array.itemsize != 2 else array.ravel().astype(np.float32)
            json_floats.append(data)
        else:
            entry["data"] = _json_data(name, array)
        outputs.append(entry)
    doc: dict[str, Any] = {"model_name": response.model_name, "model_version": response.model_version}
    if response.id:
        doc["id"] = response.id
    if response.parameters:
        doc["parameters"] = response.parameters
    doc["outputs"] = outputs
    header = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    if json_floats and b"null" in header:
        # orjson writes NaN and Inf as null; such data (rare) is written again with the right tokens.
        header = _with_non_finite(doc, json_floats)
    if not blobs:
        return header, None
    return header + b"".join(blobs), len(header)


def _with_non_finite(doc: dict[str, Any], json_floats: list[np.ndarray]) -> bytes:
    markers: dict[bytes, bytes] = {}
    for entry in doc["outputs"]:
        data = entry.get("data")
        if any(data is f for f in json_floats) and not np.isfinite(data).all():
            placeholder = f"__inferd_non_finite_{len(markers)}__"
            markers[f'"{placeholder}"'.encode()] = _non_finite_tokens(data)
            entry["data"] = placeholder
    header = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    for marker, tokens in markers.items():
        header = header.replace(marker, tokens)
    return header
