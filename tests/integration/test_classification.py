"""Triton's classification extension: a requested output returned as its top-k `"score:index[:label]"` strings,
over HTTP (JSON and binary) and gRPC, labels from the output's `label_filename`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from clients import make_input
from models import (
    NOBATCH,
    NOBATCH_CONFIG,
    SIMPLE_STRING,
    SIMPLE_STRING_CONFIG,
    double_model,
    identity_config,
    identity_model,
    simple_string_model,
    write_model,
)
from serving import ServerProcess, start_server

SCORES = "scores"  # identity FP32 with labels a, b, c
COUNTS = "counts"  # identity INT32, no labels
NO_LABEL_FILE = "no_label_file"  # label_filename names a file that is not there


def _labelled(config: str, name: str, label_file: str) -> str:
    config = config.replace('name: "identity_fp32"', f'name: "{name}"')
    return config.replace('output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]',
                          f'output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] '
                          f'label_filename: "{label_file}" }} ]')


@pytest.fixture(scope="module")
def classify_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("classification") / "models"
    scores = write_model(repo, SCORES, identity_model("FP32"), _labelled(identity_config("FP32"), SCORES, "labels.txt"))
    (scores / "labels.txt").write_text("a\nb\nc\n")
    assert "label_filename" in (scores / "config.pbtxt").read_text()
    write_model(repo, COUNTS, identity_model("INT32"),
                identity_config("INT32").replace('name: "identity_int32"', f'name: "{COUNTS}"'))
    write_model(repo, NOBATCH, double_model(), NOBATCH_CONFIG)
    write_model(repo, SIMPLE_STRING, simple_string_model(), SIMPLE_STRING_CONFIG)
    write_model(repo, NO_LABEL_FILE, identity_model("FP32"),
                _labelled(identity_config("FP32"), NO_LABEL_FILE, "missing.txt"))
    process = start_server(repo, tmp_path_factory.mktemp("logs") / "inferd-classification.log",
                           "--strict-readiness=false")
    yield process
    process.stop()


def _infer(protocol: str, server: ServerProcess, model: str, x: np.ndarray, datatype: str, k: int,
           binary: bool = True) -> np.ndarray:
    if protocol == "http":
        client: Any = httpclient.InferenceServerClient(server.http_url)
        out: Any = httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary, class_count=k)
        tensor = make_input(httpclient, "INPUT0", x, datatype, binary)
    else:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        out = grpcclient.InferRequestedOutput("OUTPUT0", class_count=k)
        tensor = make_input(grpcclient, "INPUT0", x, datatype)
    try:
        result = client.infer(model, [tensor], outputs=[out])
        output = result.get_output("OUTPUT0")
        datatype_out = output["datatype"] if protocol == "http" else output.datatype
        assert datatype_out == "BYTES"
        got = result.as_numpy("OUTPUT0")
        # JSON data comes back as str, binary data as bytes.
        return np.vectorize(lambda v: v.encode() if isinstance(v, str) else v, otypes=[object])(got)
    finally:
        client.close()


CASES = [("http", True), ("http", False), ("grpc", True)]


@pytest.mark.parametrize(("protocol", "binary"), CASES)
def test_top_two_with_labels(classify_server: ServerProcess, protocol: str, binary: bool) -> None:
    x = np.array([[0.1, 0.7, 0.2]], dtype=np.float32)
    got = _infer(protocol, classify_server, SCORES, x, "FP32", 2, binary)
    assert got.shape == (1, 2)
    assert got.tolist() == [[b"0.700000:1:b", b"0.200000:2:c"]]


@pytest.mark.parametrize(("protocol", "binary"), CASES)
def test_every_row_of_a_batch(classify_server: ServerProcess, protocol: str, binary: bool) -> None:
    x = np.array([[0.1, 0.7, 0.2], [0.9, 0.05, 0.3]], dtype=np.float32)
    got = _infer(protocol, classify_server, SCORES, x, "FP32", 1, binary)
    assert got.tolist() == [[b"0.700000:1:b"], [b"0.900000:0:a"]]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_integers_without_labels_and_k_past_the_classes(classify_server: ServerProcess, protocol: str) -> None:
    x = np.array([[1, 5, 10, 4]], dtype=np.int32)
    assert _infer(protocol, classify_server, COUNTS, x, "INT32", 2).tolist() == [[b"10:2", b"5:1"]]
    # k larger than the number of classes: every class, in order.
    assert _infer(protocol, classify_server, COUNTS, x, "INT32", 9).tolist() == [[b"10:2", b"5:1", b"4:3", b"1:0"]]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_model_without_batching_gets_shape_k(classify_server: ServerProcess, protocol: str) -> None:
    x = np.array([[1.0, 3.0, 2.0], [0.5, 4.0, -1.0]], dtype=np.float32)  # OUTPUT0 = 2 * x, 6 classes
    got = _infer(protocol, classify_server, NOBATCH, x, "FP32", 3)
    assert got.tolist() == [b"8.000000:4", b"6.000000:1", b"4.000000:2"]


def test_json_request_and_response(classify_server: ServerProcess) -> None:
    body = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 3], "data": [0.1, 0.7, 0.2]}],
            "outputs": [{"name": "OUTPUT0", "parameters": {"classification": 2}}]}
    response = httpx.post(f"{classify_server.base_url}/v2/models/{SCORES}/infer", json=body, timeout=30)
    assert response.status_code == 200, response.text
    output = response.json()["outputs"][0]
    assert output == {"name": "OUTPUT0", "datatype": "BYTES", "shape": [1, 2],
                      "data": ["0.700000:1:b", "0.200000:2:c"]}


@pytest.mark.parametrize("value", [-1, "two", 1.5, True])
def test_a_bad_class_count_is_invalid(classify_server: ServerProcess, value: Any) -> None:
    body = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 3], "data": [0.1, 0.7, 0.2]}],
            "outputs": [{"name": "OUTPUT0", "parameters": {"classification": value}}]}
    response = httpx.post(f"{classify_server.base_url}/v2/models/{SCORES}/infer", json=body, timeout=30)
    assert response.status_code == 400, response.text
    assert "classification" in response.json()["error"]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_bytes_outputs_cannot_be_classified(classify_server: ServerProcess, protocol: str) -> None:
    words = np.array([[b"w"] * 16], dtype=object)
    with pytest.raises(InferenceServerException) as caught:
        _infer(protocol, classify_server, SIMPLE_STRING, words, "BYTES", 1)
    assert str(caught.value.status()) in ("400", "StatusCode.INVALID_ARGUMENT")
    assert "class result not available for output 'OUTPUT0' due to unsupported type 'BYTES'" in (
        caught.value.message() or "")


def test_a_missing_label_file_fails_the_model(classify_server: ServerProcess) -> None:
    response = httpx.post(f"{classify_server.base_url}/v2/repository/index", json={}, timeout=30)
    row = next(r for r in response.json() if r["name"] == NO_LABEL_FILE)
    assert row["state"] == "UNAVAILABLE"
    assert "missing.txt" in row["reason"]
    x = np.array([[0.1, 0.7, 0.2]], dtype=np.float32)  # the others serve
    assert _infer("http", classify_server, SCORES, x, "FP32", 1).tolist() == [[b"0.700000:1:b"]]


def test_server_metadata_lists_classification(classify_server: ServerProcess) -> None:
    metadata = httpx.get(f"{classify_server.base_url}/v2", timeout=30).json()
    assert "classification" in metadata["extensions"]


def test_labels_outside_the_model_folder_are_refused(tmp_path: Path, server_log: Path) -> None:
    repo = tmp_path / "models"
    write_model(repo, SCORES, identity_model("FP32"), _labelled(identity_config("FP32"), SCORES, "../secret.txt"))
    (repo / "secret.txt").write_text("x\n")
    process = start_server(repo, server_log, "--strict-readiness=false")
    try:
        rows = httpx.post(f"{process.base_url}/v2/repository/index", json={}, timeout=30).json()
        assert rows[0]["state"] == "UNAVAILABLE"
        assert "label_filename" in rows[0]["reason"]
    finally:
        process.stop()
