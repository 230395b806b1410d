"""inferd's `triton_python_backend_utils`: the pure parts of Triton's python-backend API, checked without a server."""

from __future__ import annotations

import numpy as np
import pytest

import triton_python_backend_utils as pb_utils

CONFIG = {
    "name": "m",
    "input": [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [4]}],
    "output": [{"name": "OUTPUT0", "data_type": "TYPE_STRING", "dims": [-1]}],
}


def test_config_lookups_and_datatypes() -> None:
    assert pb_utils.get_input_config_by_name(CONFIG, "INPUT0") == CONFIG["input"][0]
    assert pb_utils.get_output_config_by_name(CONFIG, "OUTPUT0") == CONFIG["output"][0]
    assert pb_utils.get_output_config_by_name(CONFIG, "nope") is None
    assert pb_utils.triton_string_to_numpy("TYPE_FP32") is np.float32
    assert pb_utils.triton_string_to_numpy("TYPE_STRING") is np.object_
    assert pb_utils.triton_to_numpy_type(11) is np.float32
    assert pb_utils.numpy_to_triton_type(np.int64) == 9
    assert pb_utils.numpy_to_triton_type(np.dtype("U3")) == 13
    assert not pb_utils.using_decoupled_model_transaction_policy(CONFIG)


def test_tensors_requests_and_responses() -> None:
    x = np.arange(4, dtype=np.float32)
    request = pb_utils.InferenceRequest(inputs=[pb_utils.Tensor("INPUT0", x)], requested_output_names=["OUTPUT0"])
    tensor = pb_utils.get_input_tensor_by_name(request, "INPUT0")
    assert tensor is not None and tensor.name() == "INPUT0" and tensor.as_numpy() is x
    assert pb_utils.get_input_tensor_by_name(request, "INPUT1") is None
    text = pb_utils.Tensor("OUTPUT0", np.array(["a", "bé"]))  # str arrays become BYTES (UTF-8)
    assert text.as_numpy().tolist() == [b"a", "bé".encode()]
    response = pb_utils.InferenceResponse(output_tensors=[text])
    found = pb_utils.get_output_tensor_by_name(response, "OUTPUT0")
    assert not response.has_error() and found is not None and found.as_numpy() is text.as_numpy()
    np.testing.assert_array_equal(np.from_dlpack(pb_utils.Tensor.from_dlpack("d", x).as_numpy()), x)
    with pytest.raises(pb_utils.TritonModelException):
        pb_utils.InferenceResponse(output_tensors=[x])  # type: ignore[list-item]
    with pytest.raises(pb_utils.TritonModelException):
        request.exec()  # a BLS request needs the name of the model it calls


def test_errors_keep_their_code() -> None:
    plain = pb_utils.TritonError("bad")
    assert plain.message() == "bad" and plain.code() == pb_utils.TritonError.INTERNAL and not plain.code_given
    coded = pb_utils.TritonError("gone", pb_utils.TritonError.NOT_FOUND)
    assert coded.code() == 2 and coded.code_given
    response = pb_utils.InferenceResponse(error=coded)
    assert response.has_error() and response.error() is coded


def test_response_sender_takes_one_final_response() -> None:
    sender = pb_utils.InferenceRequest().get_response_sender()
    sender.send(pb_utils.InferenceResponse(), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
    assert len(sender.responses) == 1
    with pytest.raises(pb_utils.TritonModelException):
        sender.send(pb_utils.InferenceResponse())


def test_byte_tensor_serialization_round_trips() -> None:
    values = np.array([b"", b"ab", "cé".encode()], dtype=np.object_)
    encoded = pb_utils.serialize_byte_tensor(values)
    assert encoded.dtype == np.uint8 and encoded[:4].tolist() == [0, 0, 0, 0]
    assert pb_utils.deserialize_bytes_tensor(encoded.tobytes()).tolist() == values.tolist()
