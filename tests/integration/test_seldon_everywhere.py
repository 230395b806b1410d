"""Seldon's protocol for every model `inferd serve` serves, as Seldon Core's engine answers it: a real server, ONNX
models built here, and Seldon's two ways of naming the model (its ingress path, and the Seldon-Model header)."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from models import (
    SIMPLE,
    add_simple,
    identity_config,
    identity_model,
    identity_name,
    make_model,
    write_model,
)
from serving import Microservice, ServerProcess, start_server

MLP = "mlp"
TABLE = "table_sum"  # two one-value inputs "a" and "b": total = a + b
BYTES_MODEL = identity_name("BYTES")
WEIGHTS = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
BIAS = np.array([0.5, -1.0, 0.25], dtype=np.float32)


def mlp_model() -> bytes:
    """FP32 [batch, 4] -> relu(x @ W + b), [batch, 3]."""
    io = [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4]),
          helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 3])]
    nodes = [helper.make_node("MatMul", ["input", "W"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["z"]),
             helper.make_node("Relu", ["z"], ["scores"])]
    return make_model(nodes, io[:1], io[1:], [numpy_helper.from_array(WEIGHTS, "W"),
                                              numpy_helper.from_array(BIAS, "b")], name=MLP)


def mlp_expected(x: np.ndarray) -> np.ndarray:
    return np.maximum(x.astype(np.float32) @ WEIGHTS + BIAS, 0)


def table_model() -> bytes:
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 1]) for n in ("a", "b", "total")]
    return make_model([helper.make_node("Add", ["a", "b"], ["total"])], io[:2], io[2:], name=TABLE)


TABLE_CONFIG = f"""
name: "{TABLE}"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ {{ name: "a" data_type: TYPE_FP32 dims: [ 1 ] }}, {{ name: "b" data_type: TYPE_FP32 dims: [ 1 ] }} ]
output [ {{ name: "total" data_type: TYPE_FP32 dims: [ 1 ] }} ]
"""


def build_repository(repo: Path) -> Path:
    """mlp (one input), simple (two inputs, two outputs), table_sum (columns by name), identity_bytes (BYTES)."""
    repo.mkdir(parents=True, exist_ok=True)
    write_model(repo, MLP, mlp_model(), None)
    add_simple(repo)
    write_model(repo, TABLE, table_model(), TABLE_CONFIG)
    write_model(repo, BYTES_MODEL, identity_model("BYTES"), identity_config("BYTES"))
    return repo


@pytest.fixture(scope="module")
def seldon_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("seldon_everywhere")
    process = start_server(build_repository(root / "models"), root / "server.log")
    yield process
    process.stop()


@pytest.fixture(scope="module")
def http(seldon_server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=seldon_server.base_url, timeout=30.0) as client:
        yield client


def _predictions(http: httpx.Client, model: str, body: Any, namespace: str = "default") -> httpx.Response:
    return http.post(f"/seldon/{namespace}/{model}/api/v1.0/predictions", json=body)


def _ok(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert isinstance(body, dict)
    return body


def _failure(response: httpx.Response, status: int, *words: str) -> str:
    """The engine's error envelope, with the HTTP status as its code."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"status"}, body
    envelope = body["status"]
    assert envelope["status"] == "FAILURE" and envelope["code"] == status, body
    assert isinstance(envelope["reason"], str) and envelope["reason"], body
    for word in words:
        assert word.lower() in envelope["info"].lower(), body
    return str(envelope["info"])


# ---- data forms ----

def test_ndarray_in_ndarray_out(http: httpx.Client) -> None:
    x = np.array([[1, 2, 3, 4], [-4, -3, -2, -1]], dtype=np.float32)
    body = _ok(_predictions(http, MLP, {"data": {"ndarray": x.tolist()}}))
    assert set(body["data"]) == {"names", "ndarray"}
    np.testing.assert_allclose(body["data"]["ndarray"], mlp_expected(x), rtol=1e-6)
    assert body["data"]["names"] == ["t:0", "t:1", "t:2"]


def test_tensor_in_tensor_out(http: httpx.Client) -> None:
    x = np.array([[0.5, 1.5, -2, 3], [1, 1, 1, 1], [9, 8, 7, 6]], dtype=np.float32)
    body = _ok(_predictions(http, MLP, {"data": {"tensor": {"shape": [3, 4], "values": x.ravel().tolist()}}}))
    tensor = body["data"]["tensor"]
    assert tensor["shape"] == [3, 3]
    np.testing.assert_allclose(np.array(tensor["values"]).reshape(3, 3), mlp_expected(x), rtol=1e-6)
    assert "ndarray" not in body["data"]


def test_one_instance_is_a_batch_of_one(http: httpx.Client) -> None:
    body = _ok(_predictions(http, MLP, {"data": {"ndarray": [1, 2, 3, 4]}}))
    np.testing.assert_allclose(body["data"]["ndarray"], mlp_expected(np.array([[1, 2, 3, 4]])), rtol=1e-6)


def test_names_map_columns_to_inputs_by_name(http: httpx.Client) -> None:
    """Names are the table's columns: here given in the opposite order of the model's inputs."""
    body = _ok(_predictions(http, TABLE, {"data": {"names": ["b", "a"], "ndarray": [[1, 10], [2, 20], [0.5, 5]]}}))
    assert body["data"]["names"] == ["t:0"]
    assert body["data"]["ndarray"] == [[11.0], [22.0], [5.5]]


def test_several_inputs_by_position(http: httpx.Client) -> None:
    """Without names, the data's first axis runs over the model's inputs; several outputs come back the same way,
    named."""
    a = np.arange(16)
    body = _ok(_predictions(http, SIMPLE, {"data": {"ndarray": [a.tolist(), (2 * a).tolist()]}}))
    assert body["data"]["names"] == ["OUTPUT0", "OUTPUT1"]
    assert body["data"]["ndarray"] == [[(3 * a).tolist()], [(-a).tolist()]]


def test_several_outputs_as_a_tensor(http: httpx.Client) -> None:
    a = np.arange(32).reshape(2, 16)
    values = np.stack([a, a]).ravel().tolist()
    body = _ok(_predictions(http, SIMPLE, {"data": {"tensor": {"shape": [2, 2, 16], "values": values}}}))
    tensor = body["data"]["tensor"]
    assert tensor["shape"] == [2, 2, 16]
    np.testing.assert_array_equal(np.array(tensor["values"]).reshape(2, 2, 16), np.stack([2 * a, 0 * a]))


def test_str_data_to_a_bytes_model(http: httpx.Client) -> None:
    body = _ok(_predictions(http, BYTES_MODEL, {"strData": "héllo, Seldon"}))
    assert body["strData"] == "héllo, Seldon"


def test_bin_data_and_json_data_to_a_bytes_model(http: httpx.Client) -> None:
    raw = "bytes ✓".encode()  # ONNX string tensors hold UTF-8 text only
    body = _ok(_predictions(http, BYTES_MODEL, {"binData": base64.b64encode(raw).decode()}))
    assert base64.b64decode(body["binData"]) == raw
    body = _ok(_predictions(http, BYTES_MODEL, {"jsonData": {"question": "why", "n": [1, 2]}}))
    assert body["jsonData"] == {"question": "why", "n": [1, 2]}


def test_ndarray_of_strings_to_a_bytes_model(http: httpx.Client) -> None:
    body = _ok(_predictions(http, BYTES_MODEL, {"data": {"ndarray": [["a", "bb", "ccc"]]}}))
    assert body["data"]["ndarray"] == [["a", "bb", "ccc"]]


# ---- meta ----

def test_meta_puid_is_made_when_absent(http: httpx.Client) -> None:
    first = _ok(_predictions(http, MLP, {"data": {"ndarray": [[1, 2, 3, 4]]}}))["meta"]
    second = _ok(_predictions(http, MLP, {"data": {"ndarray": [[1, 2, 3, 4]]}}))["meta"]
    for meta in (first, second):
        assert len(meta["puid"]) == 26 and meta["puid"].isalnum() and meta["puid"] == meta["puid"].lower()
    assert first["puid"] != second["puid"]
    assert first["requestPath"] == {MLP: f"{MLP}:1"}
    assert first["routing"] == {} and first["tags"] == {} and first["metrics"] == []


def test_meta_is_echoed(http: httpx.Client) -> None:
    meta = {"puid": "my-puid-1", "tags": {"caller": "test"}, "routing": {"router": 0},
            "requestPath": {"transformer": "repo/t:1"}, "metrics": [{"key": "k", "type": "COUNTER", "value": 1}]}
    answer = _ok(_predictions(http, MLP, {"meta": meta, "data": {"ndarray": [[1, 2, 3, 4]]}}))["meta"]
    assert answer["puid"] == "my-puid-1"
    assert answer["tags"] == {"caller": "test"}
    assert answer["routing"] == {"router": 0}
    assert answer["requestPath"] == {"transformer": "repo/t:1", MLP: f"{MLP}:1"}
    assert answer["metrics"] == meta["metrics"]


# ---- the Seldon-Model header, and other namespaces ----

@pytest.mark.parametrize("header", ["Seldon-Model", "seldon-model", "SELDON-MODEL"])
def test_seldon_model_header_names_the_model(http: httpx.Client, header: str) -> None:
    x = np.array([[4, 3, 2, 1]], dtype=np.float32)
    response = http.post("/api/v1.0/predictions", json={"data": {"ndarray": x.tolist()}}, headers={header: MLP})
    np.testing.assert_allclose(_ok(response)["data"]["ndarray"], mlp_expected(x), rtol=1e-6)


def test_any_namespace_and_the_v0_1_path(http: httpx.Client) -> None:
    x = [[1, 1, 1, 1]]
    direct = _ok(_predictions(http, MLP, {"data": {"ndarray": x}}, namespace="seldon-prod"))["data"]
    old = _ok(http.post("/api/v0.1/predictions", json={"data": {"ndarray": x}}, headers={"Seldon-Model": MLP}))
    assert old["data"] == direct


# ---- errors: the engine's envelope, and the server keeps serving ----

def test_errors_in_seldons_envelope(http: httpx.Client) -> None:
    _failure(_predictions(http, "no_such_model", {"data": {"ndarray": [[1]]}}), 404, "no_such_model")
    _failure(http.post("/api/v1.0/predictions", json={"data": {"ndarray": [[1]]}}), 400, "Seldon-Model")
    _failure(http.post("/api/v1.0/predictions", json={"data": {"ndarray": [[1]]}},
                       headers={"Seldon-Model": "nope"}), 404, "nope")
    _failure(_predictions(http, MLP, {"strData": "text"}), 400, "BYTES", "strData")
    _failure(_predictions(http, MLP, {"data": {"ndarray": [["a", "b", "c", "d"]]}}), 400, "strings")
    _failure(_predictions(http, MLP, {"data": {"ndarray": [[1, 2, 3]]}}), 400, "input")
    _failure(_predictions(http, MLP, {"data": {"tensor": {"shape": [2, 4], "values": [1, 2]}}}), 400, "shape")
    _failure(_predictions(http, MLP, {"data": {"ndarray": [[1, 2], [3]]}}), 400)
    _failure(_predictions(http, MLP, {"meta": {}}), 400, "data")
    _failure(_predictions(http, MLP, [1, 2, 3]), 400)
    _failure(_predictions(http, SIMPLE, {"data": {"ndarray": [[1] * 16]}}), 400, "INPUT0", "INPUT1")
    _failure(_predictions(http, BYTES_MODEL, {"binData": "%%%"}), 400, "base64")
    response = http.post(f"/seldon/default/{MLP}/api/v1.0/predictions", content=b"{not json")
    _failure(response, 400, "JSON")
    # and it still serves
    _ok(_predictions(http, MLP, {"data": {"ndarray": [[1, 2, 3, 4]]}}))


def test_wrong_method_is_seldons_405(http: httpx.Client) -> None:
    response = http.get(f"/seldon/default/{MLP}/api/v1.0/predictions")
    assert response.status_code == 405
    assert "status" in response.json()


# ---- feedback ----

def test_feedback_to_a_tensor_model_is_an_empty_success_and_counted(http: httpx.Client,
                                                                   seldon_server: ServerProcess) -> None:
    predicted = _ok(_predictions(http, MLP, {"data": {"ndarray": [[1, 2, 3, 4]]}}))
    feedback = {"request": {"data": {"ndarray": [[1, 2, 3, 4]]}}, "response": predicted, "reward": 0.75}
    body = _ok(http.post(f"/seldon/default/{MLP}/api/v1.0/feedback", json=feedback))
    assert body == {"meta": {"puid": predicted["meta"]["puid"]}}
    body = _ok(http.post("/api/v1.0/feedback", json={"reward": 0.25}, headers={"Seldon-Model": MLP}))
    assert set(body) == {"meta"} and len(body["meta"]["puid"]) == 26
    metrics = httpx.get(f"http://127.0.0.1:{seldon_server.metrics_port}/metrics", timeout=10).text
    assert f'seldon_api_model_feedback_total{{model_name="{MLP}"}} 2.0' in metrics
    assert f'seldon_api_model_feedback_reward_total{{model_name="{MLP}"}} 1.0' in metrics


def test_bad_feedback_is_a_400(http: httpx.Client) -> None:
    _failure(http.post(f"/seldon/default/{MLP}/api/v1.0/feedback", json={"reward": "lots"}), 400, "reward")
    _failure(http.post(f"/seldon/default/{MLP}/api/v1.0/feedback", json={"request": [1]}), 400, "request")
    _failure(http.post("/seldon/default/nope/api/v1.0/feedback", json={"reward": 1}), 404, "nope")


# ---- the same model over V2: one pipeline, so the statistics count Seldon's calls ----

def test_seldon_calls_count_in_the_models_statistics(http: httpx.Client) -> None:
    def successes() -> int:
        stats = http.get(f"/v2/models/{TABLE}/stats").json()["model_stats"][0]
        return int(stats["inference_stats"]["success"]["count"])

    before = successes()
    for _ in range(3):
        _ok(_predictions(http, TABLE, {"data": {"names": ["a", "b"], "ndarray": [[1, 2]]}}))
    _failure(_predictions(http, TABLE, {"data": {"names": ["a", "b"], "ndarray": [[1, 2, 3]]}}), 400)
    assert successes() == before + 3


# ---- a model that takes whole messages (a Seldon class, as graphs are): it gets the message itself ----

LEARNER = '''
class Learner:
    def __init__(self):
        self.rewards = 0.0
    def predict(self, X, features_names, meta):
        if X[0][0] < 0:
            raise ValueError("negative features")
        return [[row[0] * 2, self.rewards] for row in X]
    def send_feedback(self, features, feature_names, reward, truth, routing=None):
        self.rewards += reward
        return []
'''


@pytest.fixture(scope="module")
def learner(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Microservice]:
    folder = tmp_path_factory.mktemp("seldon_learner")
    (folder / "learner.py").write_text(LEARNER)
    started = Microservice(folder, folder / "service.log", "learner:Learner")
    try:
        started.wait_live()
        yield started
    finally:
        started.stop()


def test_message_model_gets_the_message_and_its_feedback(learner: Microservice) -> None:
    with httpx.Client(base_url=learner.base_url, timeout=30.0) as http:
        body = _ok(_predictions(http, "learner", {"data": {"ndarray": [[1.5], [3]]}}))
        assert body["data"]["ndarray"] == [[3.0, 0.0], [6.0, 0.0]]
        assert len(body["meta"]["puid"]) == 26
        feedback = {"request": {"data": {"ndarray": [[1.5]]}}, "response": body, "reward": 2.5}
        _ok(http.post("/seldon/default/learner/api/v1.0/feedback", json=feedback))
        _ok(http.post("/api/v1.0/feedback", json={"reward": 1}, headers={"Seldon-Model": "learner"}))
        body = _ok(_predictions(http, "learner", {"data": {"ndarray": [[1]]}, "meta": {"puid": "given"}}))
        assert body["data"]["ndarray"] == [[2.0, 3.5]]  # both rewards reached the class's send_feedback
        assert body["meta"]["puid"] == "given"
        _failure(_predictions(http, "learner", {"data": {"ndarray": [[-1]]}}), 500, "negative features")
        _failure(_predictions(http, "other", {"data": {"ndarray": [[1]]}}), 404, "other")
