"""Triton's V2 gRPC messages ⇄ the core's types.

The protobuf messages are used as they are (no parallel model). Tensor bytes go through the shared codecs in
`frontends.tensors`, so gRPC raw contents and HTTP binary data decode alike: numeric raw contents become arrays
with `np.frombuffer`, without a copy.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from ...limits import DEFAULT_LIMITS, RequestLimits
from ...memory import shared_memory_parameters, shared_memory_ref
from ...protos import service_pb2 as pb
from ...types import InferenceRequest, InferenceResponse, InferError, RequestedOutput, SharedMemoryRef, datatype_of
from ..tensors import check_shape, decode_list, decode_raw, encode_raw

__all__ = [
    "cuda_shared_memory_status_response",
    "decode_infer_request",
    "decode_parameters",
    "encode_infer_response",
    "encode_parameters",
    "load_parameters",
    "model_metadata_response",
    "repository_index_response",
    "server_metadata_response",
    "system_shared_memory_status_response",
]

# The typed `InferTensorContents` field each datatype's elements travel in (model_config / grpc_service.proto).
# FP16 and BF16 have none: those tensors can only come as raw_input_contents.
_CONTENTS_FIELD: dict[str, str] = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
_RAW_ONLY = ("FP16", "BF16")
_INT64_MAX = 2**63 - 1


# ---- parameters ----

def decode_parameters(parameters: Mapping[str, Any]) -> dict[str, Any]:
    """An `InferParameter` map as plain Python values (the oneof that is set; None when none is)."""
    values: dict[str, Any] = {}
    for key, param in parameters.items():
        choice = param.WhichOneof("parameter_choice")
        values[key] = getattr(param, choice) if choice is not None else None
    return values


def encode_parameters(values: Mapping[str, Any], target: Any) -> None:
    """Fill an `InferParameter` map from Python values; what has no protobuf type travels as its string form."""
    for key, value in values.items():
        if isinstance(value, np.generic):
            value = value.item()
        param = target[key]
        if isinstance(value, bool):
            param.bool_param = value
        elif isinstance(value, int):
            if value > _INT64_MAX:
                param.uint64_param = value
            else:
                param.int64_param = value
        elif isinstance(value, float):
            param.double_param = value
        else:
            param.string_param = value if isinstance(value, str) else str(value)


# ---- inference ----

def decode_infer_request(request: pb.ModelInferRequest, limits: RequestLimits = DEFAULT_LIMITS) -> InferenceRequest:
    """A `ModelInferRequest` as the core's request. Raises INVALID_ARGUMENT in Triton's words.

    `limits` are checked on the declared shapes before any data is decoded. Inputs placed in shared memory have no
    raw_input_contents entry (as tritonclient sends them) and are left for the core to read (`shared_inputs`).
    """
    model = request.model_name
    limits.check_input_count(len(request.inputs))
    raw = request.raw_input_contents
    raw_index = 0
    inputs: dict[str, np.ndarray] = {}
    datatypes: dict[str, str] = {}
    shared: dict[str, tuple[tuple[int, ...], SharedMemoryRef]] = {}
    for tensor in request.inputs:
        name, datatype = tensor.name, tensor.datatype
        if name in inputs or name in shared:
            raise InferError.invalid(f"input '{name}' appears more than once in the request for model '{model}'")
        shape = check_shape(name, list(tensor.shape))
        limits.check_elements(name, shape)
        contents = tensor.contents.ListFields() if tensor.HasField("contents") else []
        datatypes[name] = datatype
        ref = shared_memory_ref(f"input '{name}'", decode_parameters(tensor.parameters)) if tensor.parameters else None
        if ref is not None:
            if contents:
                raise InferError.invalid(f"input '{name}' for model '{model}' is in shared memory: its contents "
                                         "field must not be set")
            shared[name] = (shape, ref)
        elif raw:
            if contents:
                raise InferError.invalid(f"contents field must not be specified when using raw_input_contents "
                                         f"for '{name}' for model '{model}'")
            if raw_index >= len(raw):
                raise _raw_count_error(request, len(shared))
            inputs[name] = decode_raw(name, datatype, shape, raw[raw_index])
            raw_index += 1
        else:
            inputs[name] = _decode_contents(model, name, datatype, shape, contents)
    if raw and raw_index != len(raw):
        raise _raw_count_error(request, len(shared))
    outputs = None
    if request.outputs:
        outputs = [RequestedOutput(out.name, decode_parameters(out.parameters)) for out in request.outputs]
    return InferenceRequest(model, inputs, datatypes, request.model_version, request.id, outputs,
                            decode_parameters(request.parameters), shared)


def _raw_count_error(request: pb.ModelInferRequest, shared: int) -> InferError:
    expected = len(request.inputs) - shared
    return InferError.invalid(f"expected {expected} raw_input_contents for model '{request.model_name}' (one per "
                              f"input not in shared memory, in input order), got {len(request.raw_input_contents)}")


def _decode_contents(model: str, name: str, datatype: str, shape: tuple[int, ...],
                     contents: list[tuple[Any, Any]]) -> np.ndarray:
    """An input from the typed `contents` field its datatype uses."""
    field = _CONTENTS_FIELD.get(datatype)
    if field is None:
        if datatype in _RAW_ONLY:
            raise InferError.invalid(f"input '{name}' for model '{model}': {datatype} data has no typed contents "
                                     "field; send it in raw_input_contents")
        raise InferError.invalid(f"input '{name}': unsupported datatype '{datatype}'")
    if not contents:
        # An empty tensor may have no data at all; anything else needs some.
        if 0 not in shape:
            raise InferError.invalid(f"unable to find data for input tensor '{name}' for model '{model}' "
                                     "in request.")
        return decode_list(name, datatype, shape, [])
    given = [descriptor.name for descriptor, _ in contents]
    if given != [field]:
        raise InferError.invalid(f"input '{name}' for model '{model}': {datatype} data goes in contents.{field}, "
                                 f"got contents.{', contents.'.join(given)}")
    return decode_list(name, datatype, shape, list(contents[0][1]), from_json=False)


def encode_infer_response(response: InferenceResponse) -> pb.ModelInferResponse:
    """A `ModelInferResponse`; outputs always as raw_output_contents, as Triton sends them and tritonclient reads."""
    message = pb.ModelInferResponse(model_name=response.model_name, model_version=response.model_version,
                                    id=response.id)
    shared = response.shared_outputs
    for name, array in response.outputs.items():
        output = message.outputs.add(name=name, datatype=datatype_of(array), shape=array.shape)
        if shared and name in shared:
            # The data is in the client's region; an empty entry keeps the others at their output's index.
            encode_parameters(shared_memory_parameters(shared[name]), output.parameters)
            message.raw_output_contents.append(b"")
        else:
            message.raw_output_contents.append(encode_raw(array))
    if response.parameters:
        encode_parameters(response.parameters, message.parameters)
    return message


# ---- metadata and repository ----

def server_metadata_response(metadata: Mapping[str, Any]) -> pb.ServerMetadataResponse:
    return pb.ServerMetadataResponse(name=metadata["name"], version=metadata["version"],
                                     extensions=metadata.get("extensions", []))


def _tensor_metadata(tensors: Iterable[Mapping[str, Any]]) -> list[pb.ModelMetadataResponse.TensorMetadata]:
    return [pb.ModelMetadataResponse.TensorMetadata(name=t["name"], datatype=t["datatype"], shape=t["shape"])
            for t in tensors]


def model_metadata_response(metadata: Mapping[str, Any]) -> pb.ModelMetadataResponse:
    return pb.ModelMetadataResponse(
        name=metadata["name"],
        versions=metadata.get("versions", []),
        platform=metadata.get("platform", ""),
        inputs=_tensor_metadata(metadata.get("inputs", [])),
        outputs=_tensor_metadata(metadata.get("outputs", [])),
    )


def repository_index_response(rows: Iterable[Mapping[str, str]]) -> pb.RepositoryIndexResponse:
    return pb.RepositoryIndexResponse(models=[
        pb.RepositoryIndexResponse.ModelIndex(name=row["name"], version=row.get("version", ""),
                                              state=row.get("state", ""), reason=row.get("reason", ""))
        for row in rows
    ])


def system_shared_memory_status_response(
        regions: Iterable[Mapping[str, Any]]) -> pb.SystemSharedMemoryStatusResponse:
    response = pb.SystemSharedMemoryStatusResponse()
    for region in regions:
        response.regions[region["name"]].CopyFrom(pb.SystemSharedMemoryStatusResponse.RegionStatus(
            name=region["name"], key=region["key"], offset=region["offset"], byte_size=region["byte_size"]))
    return response


def cuda_shared_memory_status_response(
        regions: Iterable[Mapping[str, Any]]) -> pb.CudaSharedMemoryStatusResponse:
    response = pb.CudaSharedMemoryStatusResponse()
    for region in regions:
        response.regions[region["name"]].CopyFrom(pb.CudaSharedMemoryStatusResponse.RegionStatus(
            name=region["name"], device_id=region["device_id"], byte_size=region["byte_size"]))
    return response


def load_parameters(request: pb.RepositoryModelLoadRequest) -> tuple[str | None, dict[str, bytes]]:
    """The JSON config override (`config` parameter) and the model files (`file:<path>` bytes parameters) of a
    `RepositoryModelLoadRequest`."""
    config: str | None = None
    files: dict[str, bytes] = {}
    for key, param in request.parameters.items():
        if key == "config":
            if param.WhichOneof("parameter_choice") != "string_param":
                raise InferError.invalid(f"failed to load '{request.model_name}': the 'config' parameter must be "
                                         "a string holding the model configuration as JSON")
            config = param.string_param
        elif key.startswith("file:"):
            if param.WhichOneof("parameter_choice") != "bytes_param":
                raise InferError.invalid(f"failed to load '{request.model_name}': parameter '{key}' must hold the "
                                         "file content as bytes_param")
            files[key[len("file:"):]] = param.bytes_param
    return config, files
