"""TF-Serving's REST API (KServe's V1 protocol has the same shape) for every model, whatever its backend.

- `POST /v1/models/{m}[/versions/{v}]:predict` with `{"instances": [...]}` (row form: one entry per instance,
  stacked along a new first dimension) or `{"inputs": ...}` (columnar form: whole tensors), inputs named
  (`{name: value}`) or, for a one-input model, unnamed; `{"b64": "..."}` gives bytes to BYTES inputs.
- `GET /v1/models/{m}[/versions/{v}]` the versions' status, `.../metadata` the signature in TF-Serving's shape.

Only the wire format lives here: the core's `InferenceRequest` and `Server.infer_request` run the call, so the
checks, limits, statistics and error texts are the V2 ones; errors go back as `{"error": "..."}`.

BYTES outputs: an output comes back as `{"b64": ...}` values when its name ends with `_bytes` (TF-Serving's rule) or
when any of its elements is not valid UTF-8; otherwise as strings.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from typing import TYPE_CHECKING, Any

import numpy as np

from ...config import DEFAULT_SIGNATURE, signature_name
from ...model import ServedModel, TensorSpec
from ...pipeline.call import RequestContext
from ...server import Server
from ...types import ErrorKind, InferenceRequest, InferenceResponse, InferError
from ..tensors import MAX_DIMS, decode_nested
from .messages import HttpRequest, Params, Reply, json_reply
from .v2 import load_json_object

if TYPE_CHECKING:
    from .app import HttpFrontend

__all__ = ["DEFAULT_SIGNATURE", "classify_or_regress", "model_metadata", "model_status", "predict"]

_PREDICT_METHOD = "tensorflow/serving/predict"
# A :predict with more instances than max_batch_size runs in slices; this many slices are in flight at once.
_BATCHES_AT_ONCE = 4

# V2 datatype names -> TensorFlow's DataType enum names (for the metadata's signature).
_TF_DTYPES = {
    "BOOL": "DT_BOOL", "UINT8": "DT_UINT8", "UINT16": "DT_UINT16", "UINT32": "DT_UINT32", "UINT64": "DT_UINT64",
    "INT8": "DT_INT8", "INT16": "DT_INT16", "INT32": "DT_INT32", "INT64": "DT_INT64", "FP16": "DT_HALF",
    "FP32": "DT_FLOAT", "FP64": "DT_DOUBLE", "BYTES": "DT_STRING", "BF16": "DT_BFLOAT16",
}
# The manager's version states in TF-Serving's words (its enum has no "unavailable": a failed version has ENDed).
_TF_STATES = {"READY": "AVAILABLE", "LOADING": "LOADING", "UNLOADING": "UNLOADING", "UNAVAILABLE": "END"}

async def model_status(app: HttpFrontend, request: HttpRequest, params: Params) -> Reply:
    """`GET /v1/models/{m}[/versions/{v}]`: the versions' states in TF-Serving's words."""
    name = params["model_name"]
    status = _status(app.server, name, params.get("model_version", ""))
    principal = request.principal
    if principal is not None:  # a tenant granted some versions only sees those
        status["model_version_status"] = [row for row in status["model_version_status"]
                                          if principal.sees_version(name, row["version"])]
    return json_reply(200, status)


async def model_metadata(app: HttpFrontend, request: HttpRequest, params: Params) -> Reply:
    """`GET /v1/models/{m}[/versions/{v}]/metadata`: the signature in TF-Serving's shape."""
    name = params["model_name"]
    return json_reply(200, _metadata(app.server.model(name, _granted_version(app.server, request, name, params))))


async def predict(app: HttpFrontend, request: HttpRequest, params: Params) -> Reply:
    name = params["model_name"]
    doc = await _predict(app.server, name, _granted_version(app.server, request, name, params), request)
    return json_reply(200, doc)


def _granted_version(server: Server, request: HttpRequest, name: str, params: Params) -> str:
    """The version a request means: the one it names; else, for a tenant granted some versions only, the newest of
    those that is ready (the door has refused a version the tenant is not granted); else the newest ("")."""
    version = params.get("model_version", "")
    principal = request.principal
    granted = None if version or principal is None else principal.versions_of(name)
    if not granted:
        return version
    known = server.version_states(name)
    ready = sorted((v for v, (state, _) in (known[0] if known else {}).items() if state == "READY"), reverse=True)
    return next((str(v) for v in ready if str(v) in granted), max(granted, key=int))


async def classify_or_regress(app: HttpFrontend, request: HttpRequest, params: Params) -> Reply:
    verb = request.path.rpartition(":")[2]
    raise InferError(ErrorKind.UNSUPPORTED, f"the :{verb} API is not supported (it needs TensorFlow Example "
                     "protos): use :predict")


# ---- status and metadata ----

def _status(server: Server, name: str, version: str) -> dict[str, Any]:
    known = server.version_states(name)
    if known is None:
        server.model(name, version)  # raises the core's "unknown model" error
        raise InferError.not_found(f"Request for unknown model: '{name}' is not found")
    states, model_reason = known
    versions = sorted(states.items(), reverse=True)
    if version:
        if not version.isdigit():
            raise InferError.invalid(f"model version must be a non-negative integer, got '{version}'")
        versions = [(v, s) for v, s in versions if v == int(version)]
        if not versions:
            raise InferError.not_found(f"Request for unknown model: '{name}' version {version} is not found")
    elif not versions:
        reason = f": {model_reason}" if model_reason else ""
        raise InferError.not_found(f"Request for unknown model: '{name}' has no versions{reason}")
    rows = []
    for number, (state, why) in versions:
        failed = state == "UNAVAILABLE"
        rows.append({"version": str(number), "state": _TF_STATES.get(state, "UNKNOWN"),
                     "status": {"error_code": "UNAVAILABLE" if failed else "OK",
                                "error_message": why if failed else ""}})
    return {"model_version_status": rows}


def _tensor_info(spec: TensorSpec, batching: bool) -> dict[str, Any]:
    dims = ([-1] if batching else []) + list(spec.dims)
    return {"dtype": _TF_DTYPES.get(spec.datatype, "DT_INVALID"),
            "tensor_shape": {"dim": [{"size": str(d)} for d in dims]}, "name": spec.name}


def _metadata(served: ServedModel) -> dict[str, Any]:
    batching = served.max_batch_size > 0
    signature = {
        "inputs": {n: _tensor_info(s, batching) for n, s in served.inputs.items()},
        "outputs": {n: _tensor_info(s, batching) for n, s in served.outputs.items()},
        "method_name": _PREDICT_METHOD,
    }
    return {"model_spec": {"name": served.name, "signature_name": "", "version": served.version_str},
            "metadata": {"signature_def": {"signature_def": {signature_name(served.config): signature}}}}


# ---- predict ----

async def _predict(server: Server, name: str, version: str, request: HttpRequest) -> dict[str, Any]:
    body = request.body
    served = server.model(name, version)  # an unknown model is the first error
    doc = load_json_object(body)
    signature = doc.get("signature_name", "")
    if not isinstance(signature, str):
        raise InferError.invalid("'signature_name' must be a string")
    if signature and signature not in (DEFAULT_SIGNATURE, signature_name(served.config)):
        raise InferError.invalid(f"model '{name}' has no signature '{signature}' (it has "
                                 f"'{signature_name(served.config)}')")
    has_rows, has_columns = "instances" in doc, "inputs" in doc
    if has_rows == has_columns:
        raise InferError.invalid("the request must have exactly one of 'instances' (row form) or 'inputs' "
                                 "(columnar form)")
    if has_rows:
        inputs, rows = _row_inputs(served, doc["instances"]), True
    else:
        inputs, rows = _columnar_inputs(served, doc["inputs"]), False
    batching = served.max_batch_size > 0
    inputs = {n: _to_config_shape(served.inputs[n], a, batching) for n, a in inputs.items()}
    server.limits.check_input_count(len(inputs))
    for input_name, array in inputs.items():
        server.limits.check_elements(input_name, array.shape)
    datatypes = {n: served.inputs[n].datatype for n in inputs}
    context = request.context("v1")
    rows_given = _batch_rows(inputs) if batching else 0
    if rows_given > served.max_batch_size:  # TF-Serving takes any number of instances: run them in batches
        results = await _infer_in_batches(server, InferenceRequest(name, inputs, datatypes, version), context,
                                          served.max_batch_size, rows_given)
    else:
        results = (await server.infer_request(InferenceRequest(name, inputs, datatypes, version), context)).outputs
    outputs = {n: _output_value(n, _to_model_shape(served.outputs.get(n), a, batching)) for n, a in results.items()}
    if rows:
        return {"predictions": _split_rows(outputs, len(doc["instances"]))}
    return {"outputs": next(iter(outputs.values())) if len(outputs) == 1 else outputs}


def _batch_rows(inputs: dict[str, np.ndarray]) -> int:
    """The rows every input has along its first dimension (0 when they disagree: the core says so)."""
    rows = {a.shape[0] if a.ndim else -1 for a in inputs.values()}
    return rows.pop() if len(rows) == 1 else 0


async def _infer_in_batches(server: Server, request: InferenceRequest, context: RequestContext, size: int,
                            rows: int) -> dict[str, np.ndarray]:
    """A request with more rows than the model's max_batch_size, as TF-Serving answers it: slices of `size` rows
    run as pipeline requests of their own (a few at a time), their outputs joined in order. Views, no copies, on
    the way in; one concatenation per output on the way out."""
    answers: list[InferenceResponse] = []
    starts = list(range(0, rows, size))
    for first in range(0, len(starts), _BATCHES_AT_ONCE):
        answers += await asyncio.gather(*(server.infer_request(
            InferenceRequest(request.model_name, {n: a[start:start + size] for n, a in request.inputs.items()},
                             request.datatypes, request.model_version), context)
            for start in starts[first:first + _BATCHES_AT_ONCE]))
    return {n: np.concatenate([answer.outputs[n] for answer in answers]) for n in answers[0].outputs}


def _to_config_shape(spec: TensorSpec, array: np.ndarray, batching: bool) -> np.ndarray:
    """TF-Serving clients send tensors in the model's own shape; where the config reshapes (Triton's dims [1] for a
    per-row scalar, as auto-complete writes it) such a tensor is handed on in the config's dims."""
    if spec.reshape is None:
        return array
    lead = array.shape[:1] if batching else ()
    own = array.shape[len(lead):]
    if len(own) != len(spec.reshape) or any(w != -1 and g != w for g, w in zip(own, spec.reshape, strict=True)):
        return array  # not the model's shape: the core checks it against the config's dims
    try:
        return array.reshape(lead + spec.dims)
    except ValueError:
        return array


def _to_model_shape(spec: TensorSpec | None, array: np.ndarray, batching: bool) -> np.ndarray:
    """An output back in the model's own shape (what TF-Serving returns) where the config reshapes it."""
    if spec is None or spec.reshape is None:
        return array
    try:
        return array.reshape(array.shape[:1] + spec.reshape if batching else spec.reshape)
    except ValueError:
        return array


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and "b64" in value


def _spec(served: ServedModel, name: str) -> TensorSpec:
    spec = served.inputs.get(name)
    if spec is None:
        raise InferError.invalid(f"unexpected inference input '{name}' for model '{served.name}' (its inputs are "
                                 f"{', '.join(served.inputs)})")
    return spec


def _only_input(served: ServedModel, form: str) -> TensorSpec:
    """The input an unnamed value is for: the model's one input, or its one required input (others optional)."""
    required = [spec for spec in served.inputs.values() if not spec.optional]
    if len(served.inputs) == 1 or len(required) == 1:
        return required[0] if required else next(iter(served.inputs.values()))
    raise InferError.invalid(f"model '{served.name}' has {len(served.inputs)} inputs "
                             f"({', '.join(served.inputs)}): {form} must name them in an object")


def _row_inputs(served: ServedModel, instances: Any) -> dict[str, np.ndarray]:
    if not isinstance(instances, list) or not instances:
        raise InferError.invalid("'instances' must be a non-empty list, one entry per instance")
    named = [isinstance(i, dict) and not _is_b64(i) for i in instances]
    if not any(named):
        spec = _only_input(served, "each instance")
        return {spec.name: _to_array(spec, instances, "instances")}
    if not all(named):
        raise InferError.invalid("'instances' mixes named (objects) and unnamed instances")
    names = list(instances[0])
    for index, instance in enumerate(instances[1:], 1):
        if set(instance) != set(names):
            raise InferError.invalid(f"instance {index} has inputs {sorted(instance)} but instance 0 has "
                                     f"{sorted(names)}: every instance must give the same inputs")
    return {n: _to_array(_spec(served, n), [i[n] for i in instances], "instances") for n in names}


def _columnar_inputs(served: ServedModel, value: Any) -> dict[str, np.ndarray]:
    if isinstance(value, dict) and not _is_b64(value):
        return {n: _to_array(_spec(served, n), v, "inputs") for n, v in value.items()}
    spec = _only_input(served, "'inputs'")
    return {spec.name: _to_array(spec, value, "inputs")}


def _to_array(spec: TensorSpec, value: Any, form: str) -> np.ndarray:
    """The tensor of a JSON value (nested lists) in the input's configured datatype."""
    if spec.datatype == "BYTES":
        leaves: list[bytes] = []
        shape = _walk(spec.name, value, leaves, form, 0)
        array = np.empty(len(leaves), dtype=np.object_)
        array[:] = leaves
        return array.reshape(shape)
    return decode_nested(spec.name, spec.datatype, value, form)


def _walk(name: str, value: Any, leaves: list[bytes], form: str, depth: int) -> tuple[int, ...]:
    """Collect the byte strings of nested lists into `leaves`; their shape (lists of one level must agree)."""
    if isinstance(value, list):
        if depth >= MAX_DIMS:
            raise InferError.invalid(f"input '{name}': {form} nest lists deeper than {MAX_DIMS} levels")
        shapes = {_walk(name, item, leaves, form, depth + 1) for item in value}
        if len(shapes) > 1:
            raise InferError.invalid(f"input '{name}': {form} have lists of different lengths at one level")
        inner = shapes.pop() if shapes else ()
        return (len(value), *inner)
    if isinstance(value, str):
        try:
            leaves.append(value.encode("utf-8"))
        except UnicodeEncodeError:
            raise InferError.invalid(f"input '{name}': a string in the {form} is not valid Unicode (it holds a "
                                     "lone surrogate)") from None
    elif _is_b64(value) and isinstance(value["b64"], str):
        try:
            leaves.append(base64.b64decode(value["b64"], validate=True))
        except binascii.Error:
            raise InferError.invalid(f"input '{name}': a 'b64' value is not valid base64") from None
    else:
        raise InferError.invalid(f"input '{name}' is BYTES: its values must be strings or {{\"b64\": \"...\"}}, "
                                 f"got {type(value).__name__}")
    return ()


def _output_value(name: str, array: np.ndarray) -> Any:
    """An output as orjson writes it: numeric arrays as they are, BYTES as nested lists of str or {"b64"}."""
    if array.dtype == np.object_:
        items = [v if isinstance(v, bytes) else str(v).encode() for v in array.ravel()]
        as_b64 = name.endswith("_bytes")
        if not as_b64:
            try:
                text = [v.decode("utf-8") for v in items]
            except UnicodeDecodeError:
                as_b64 = True
        leaves: list[Any] = ([{"b64": base64.b64encode(v).decode("ascii")} for v in items] if as_b64 else text)
        nested = np.empty(len(leaves), dtype=np.object_)
        nested[:] = leaves
        return nested.reshape(array.shape).tolist()
    if array.dtype == np.float16:
        array = array.astype(np.float32)
    return np.ascontiguousarray(array)


def _split_rows(outputs: dict[str, Any], instances: int) -> list[Any]:
    """One prediction per instance: each output's rows along the first dimension."""
    for name, value in outputs.items():
        rows = len(value) if isinstance(value, list) or np.ndim(value) else 0
        if rows != instances:
            raise InferError.invalid(f"output '{name}' has {rows} rows for {instances} instances: the row form "
                                     "needs one output row per instance (use the columnar 'inputs' form)")
    if len(outputs) == 1:
        return list(next(iter(outputs.values())))
    return [{n: v[i] for n, v in outputs.items()} for i in range(instances)]
