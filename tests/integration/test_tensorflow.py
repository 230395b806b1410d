"""The TensorFlow backend: real SavedModels (a Keras MLP from `model.export()`, tf.Modules saved with
`tf.saved_model.save`) served by a real `inferd serve`, over V2 HTTP, V2 gRPC and TF-Serving's V1 REST API.

Each served output is compared with what TensorFlow computes in this process from the same SavedModel folder and
signature, to RTOL / ATOL for floats (the server may batch requests together, which can change float summation
order slightly) and exactly for integers and strings. Loading TensorFlow takes seconds: one server serves the module.
"""

from __future__ import annotations

import base64
import os
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from clients import infer_tensors
from serving import ServerProcess, start_server

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

RTOL = 1e-5
ATOL = 1e-6

MLP = "tf_mlp"  # Keras MLP via model.export(); config names only the backend, threads and a KIND_GPU instance
STRINGS = "tf_strings"  # tf.string in and out, no config.pbtxt at all
TWO = "tf_two"  # two inputs / two outputs, fixed shapes, signature 'predict_two' chosen by TF_SIGNATURE_DEF
TWO_DEFAULT = "tf_two_default"  # the same SavedModel without a config: its serving_default signature
TWO_NAMED = "tf_two_named"  # the same SavedModel, signature chosen by `signature_name`, I/O fully declared
BAD_NAME = "tf_bad_input_name"
BAD_TYPE = "tf_bad_datatype"
BAD_SIGNATURE = "tf_bad_signature"
TWO_SIGNATURE = "predict_two"
_Module: Any = tf.Module  # a base class mypy cannot see through importorskip


class StringModel(_Module):
    """Upper-cases byte strings and counts their bytes: a BYTES input with a BYTES and an INT32 output."""

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    def serve(self, text: Any) -> dict[str, Any]:
        return {"upper": tf.strings.upper(text), "length": tf.strings.length(text)}


class TwoModel(_Module):
    """Two signatures: 'predict_two' (two inputs, two outputs) and 'serving_default' (one of each)."""

    def __init__(self) -> None:
        super().__init__()
        self.weights = tf.Variable(tf.random.stateless_normal([3, 2], seed=[1, 2]))

    @tf.function(input_signature=[tf.TensorSpec([2, 3], tf.float32, name="x"),
                                  tf.TensorSpec([2], tf.int64, name="ids")])
    def predict_two(self, x: Any, ids: Any) -> dict[str, Any]:
        return {"y": tf.matmul(x, self.weights), "ids_out": ids * 3 + 1}

    @tf.function(input_signature=[tf.TensorSpec([2, 3], tf.float32, name="x")])
    def doubled(self, x: Any) -> dict[str, Any]:
        return {"doubled": x * 2.0}


def _model_dir(repo: Path, name: str, config: str | None) -> Path:
    """`<repo>/<name>/1/model.savedmodel` (the path returned, not yet created) and the config if any."""
    (repo / name / "1").mkdir(parents=True)
    if config is not None:
        (repo / name / "config.pbtxt").write_text(config)
    return repo / name / "1" / "model.savedmodel"


def _build(repo: Path) -> dict[str, Path]:
    keras.utils.set_random_seed(0)
    files: dict[str, Path] = {}
    mlp = keras.Sequential([keras.Input((8,), name="features"), keras.layers.Dense(16, activation="relu"),
                            keras.layers.Dense(4)])
    files[MLP] = _model_dir(repo, MLP, """
backend: "tensorflow"
instance_group [ { kind: KIND_GPU count: 1 } ]
parameters { key: "TF_NUM_INTRA_THREADS" value { string_value: "1" } }
parameters { key: "TF_NUM_INTER_THREADS" value { string_value: "1" } }
""")
    mlp.export(str(files[MLP]), verbose=False)

    strings = StringModel()
    files[STRINGS] = _model_dir(repo, STRINGS, None)
    tf.saved_model.save(strings, str(files[STRINGS]), signatures={"serving_default": strings.serve})

    two = TwoModel()
    files[TWO] = _model_dir(repo, TWO, f"""
platform: "tensorflow_savedmodel"
parameters {{ key: "TF_SIGNATURE_DEF" value {{ string_value: "{TWO_SIGNATURE}" }} }}
""")
    tf.saved_model.save(two, str(files[TWO]), signatures={TWO_SIGNATURE: two.predict_two,
                                                          "serving_default": two.doubled})
    files[TWO_DEFAULT] = _model_dir(repo, TWO_DEFAULT, None)
    shutil.copytree(files[TWO], files[TWO_DEFAULT])
    files[TWO_NAMED] = _model_dir(repo, TWO_NAMED, f"""
platform: "tensorflow_savedmodel"
max_batch_size: 0
input [
  {{ name: "x" data_type: TYPE_FP32 dims: [ 2, 3 ] }},
  {{ name: "ids" data_type: TYPE_INT64 dims: [ 2 ] }}
]
output [ {{ name: "ids_out" data_type: TYPE_INT64 dims: [ 2 ] }} ]
parameters {{ key: "signature_name" value {{ string_value: "{TWO_SIGNATURE}" }} }}
""")
    shutil.copytree(files[TWO], files[TWO_NAMED])

    for name, config in (
        (BAD_NAME, 'platform: "tensorflow_savedmodel" max_batch_size: 4\n'
                   'input [ { name: "nope" data_type: TYPE_FP32 dims: [ 8 ] } ]\n'
                   'output [ { name: "output_0" data_type: TYPE_FP32 dims: [ 4 ] } ]\n'),
        (BAD_TYPE, 'platform: "tensorflow_savedmodel" max_batch_size: 4\n'
                   'input [ { name: "features" data_type: TYPE_INT32 dims: [ 8 ] } ]\n'),
        (BAD_SIGNATURE, 'backend: "tensorflow"\n'
                        'parameters { key: "TF_SIGNATURE_DEF" value { string_value: "missing" } }\n'),
    ):
        shutil.copytree(files[MLP], _model_dir(repo, name, config))
    return files


@pytest.fixture(scope="module")
def tf_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return _build(tmp_path_factory.mktemp("tensorflow") / "models")


@pytest.fixture(scope="module")
def tf_server(tf_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tf_models[MLP].parents[2]
    process = start_server(repo, tmp_path_factory.mktemp("logs") / "inferd-tf.log", "--strict-readiness=false")
    yield process
    process.stop()


@pytest.fixture(scope="module")
def http(tf_server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=tf_server.base_url, timeout=30.0) as client:
        yield client


def _reference(path: Path, signature: str, **inputs: np.ndarray) -> dict[str, np.ndarray]:
    """What TensorFlow computes in this process from the SavedModel folder's signature."""
    function = tf.saved_model.load(str(path)).signatures[signature]
    return {name: value.numpy() for name, value in function(**{k: tf.constant(v) for k, v in inputs.items()}).items()}


def _error(response: httpx.Response, *words: str) -> None:
    assert response.status_code == 400, response.text
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str), body
    for word in words:
        assert word.lower() in body["error"].lower(), body


def _two_data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    return rng.standard_normal((2, 3)).astype(np.float32), rng.integers(-100, 100, 2, dtype=np.int64)


PROTOCOLS = ["http", "grpc"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_keras_mlp(protocol: str, tf_server: ServerProcess, tf_models: dict[str, Path]) -> None:
    x = np.random.default_rng(1).standard_normal((3, 8)).astype(np.float32)
    served = infer_tensors(protocol, tf_server, MLP, {"features": (x, "FP32")}, ["output_0"])
    expected = _reference(tf_models[MLP], "serving_default", features=x)["output_0"]
    assert served["output_0"].dtype == np.float32 and served["output_0"].shape == (3, 4)
    np.testing.assert_allclose(served["output_0"], expected, rtol=RTOL, atol=ATOL)


def test_concurrent_requests_are_batched_correctly(tf_server: ServerProcess, tf_models: dict[str, Path]) -> None:
    """Requests at once go through the dynamic batcher; each answer must still be its own rows."""
    rng = np.random.default_rng(5)
    batches = [rng.standard_normal((rows, 8)).astype(np.float32) for rows in (1, 2, 1, 3, 2, 1, 1, 2)]
    with ThreadPoolExecutor(len(batches)) as pool:
        served = list(pool.map(lambda x: infer_tensors("grpc", tf_server, MLP, {"features": (x, "FP32")}, ["output_0"]),
                               batches))
    for x, answer in zip(batches, served, strict=True):
        expected = _reference(tf_models[MLP], "serving_default", features=x)["output_0"]
        np.testing.assert_allclose(answer["output_0"], expected, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_string_model(protocol: str, tf_server: ServerProcess, tf_models: dict[str, Path]) -> None:
    text = np.array([b"hello", b"TensorFlow", b"\xff\x00bin", b""], dtype=np.object_)
    served = infer_tensors(protocol, tf_server, STRINGS, {"text": (text.reshape(4, 1), "BYTES")}, ["upper", "length"])
    expected = _reference(tf_models[STRINGS], "serving_default", text=text)
    assert served["upper"].shape == (4, 1) and served["length"].shape == (4, 1)  # the auto-completed dims [1]
    assert served["upper"].ravel().tolist() == expected["upper"].tolist() == [b"HELLO", b"TENSORFLOW",
                                                                             b"\xff\x00BIN", b""]
    assert served["length"].dtype == np.int32
    np.testing.assert_array_equal(served["length"].ravel(), expected["length"])


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_two_inputs_named_signature(protocol: str, tf_server: ServerProcess, tf_models: dict[str, Path]) -> None:
    x, ids = _two_data()
    served = infer_tensors(protocol, tf_server, TWO, {"x": (x, "FP32"), "ids": (ids, "INT64")}, ["y", "ids_out"])
    expected = _reference(tf_models[TWO], TWO_SIGNATURE, x=x, ids=ids)
    np.testing.assert_allclose(served["y"], expected["y"], rtol=RTOL, atol=ATOL)
    assert served["ids_out"].dtype == np.int64
    np.testing.assert_array_equal(served["ids_out"], expected["ids_out"])


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_default_signature_without_config(protocol: str, tf_server: ServerProcess,
                                          tf_models: dict[str, Path]) -> None:
    x, _ = _two_data()
    served = infer_tensors(protocol, tf_server, TWO_DEFAULT, {"x": (x, "FP32")}, ["doubled"])
    expected = _reference(tf_models[TWO_DEFAULT], "serving_default", x=x)
    np.testing.assert_allclose(served["doubled"], expected["doubled"], rtol=RTOL, atol=ATOL)


def test_declared_config_with_signature_name(tf_server: ServerProcess, tf_models: dict[str, Path]) -> None:
    x, ids = _two_data()
    served = infer_tensors("grpc", tf_server, TWO_NAMED, {"x": (x, "FP32"), "ids": (ids, "INT64")}, ["ids_out"])
    expected = _reference(tf_models[TWO_NAMED], TWO_SIGNATURE, x=x, ids=ids)
    np.testing.assert_array_equal(served["ids_out"], expected["ids_out"])


# ---- auto-completed configurations, field by field ----

def _config(http: httpx.Client, model: str) -> dict[str, Any]:
    response = http.get(f"/v2/models/{model}/config")
    assert response.status_code == 200, response.text
    return dict(response.json())


def _io(tensors: list[dict[str, Any]]) -> list[tuple[str, str, list[int], Any]]:
    return [(t["name"], t["data_type"], t["dims"], t.get("reshape")) for t in tensors]


def test_autocompleted_keras_config(http: httpx.Client) -> None:
    config = _config(http, MLP)
    assert config["name"] == MLP
    assert config["backend"] == "tensorflow"
    assert config["platform"] == "tensorflow_savedmodel"
    assert config["max_batch_size"] == 4  # None first dims everywhere: batchable, Triton's default size
    assert "dynamic_batching" in config
    assert _io(config["input"]) == [("features", "TYPE_FP32", [8], None)]
    assert _io(config["output"]) == [("output_0", "TYPE_FP32", [4], None)]
    assert config["parameters"]["TF_NUM_INTRA_THREADS"]["string_value"] == "1"
    assert [(g["kind"], g["count"]) for g in config["instance_group"]] == [("KIND_GPU", 1)]


def test_autocompleted_string_config(http: httpx.Client) -> None:
    config = _config(http, STRINGS)
    assert config["backend"] == "tensorflow"
    assert config["platform"] == "tensorflow_savedmodel"
    assert config["max_batch_size"] == 4
    assert "dynamic_batching" in config
    # A [None] tensor is one scalar per row: dims [1] reshaped to [] for the model, as Triton writes it.
    assert _io(config["input"]) == [("text", "TYPE_STRING", [1], {"shape": []})]
    assert _io(config["output"]) == [("length", "TYPE_INT32", [1], {"shape": []}),
                                     ("upper", "TYPE_STRING", [1], {"shape": []})]


def test_autocompleted_fixed_shape_configs(http: httpx.Client) -> None:
    config = _config(http, TWO)
    assert config["platform"] == "tensorflow_savedmodel"
    assert config["backend"] == "tensorflow"
    assert config["max_batch_size"] == 0  # fixed first dims: no batching, full shapes as dims
    assert "dynamic_batching" not in config
    assert _io(config["input"]) == [("ids", "TYPE_INT64", [2], None), ("x", "TYPE_FP32", [2, 3], None)]
    assert _io(config["output"]) == [("ids_out", "TYPE_INT64", [2], None), ("y", "TYPE_FP32", [2, 2], None)]
    default = _config(http, TWO_DEFAULT)
    assert default["max_batch_size"] == 0
    assert _io(default["input"]) == [("x", "TYPE_FP32", [2, 3], None)]
    assert _io(default["output"]) == [("doubled", "TYPE_FP32", [2, 3], None)]
    named = _config(http, TWO_NAMED)  # declared: kept as written (one output of two)
    assert _io(named["output"]) == [("ids_out", "TYPE_INT64", [2], None)]


def test_contradicting_configs_are_unavailable(http: httpx.Client) -> None:
    entries = {e["name"]: e for e in http.post("/v2/repository/index", json={}).json()}
    for ready in (MLP, STRINGS, TWO, TWO_DEFAULT, TWO_NAMED):
        assert entries[ready]["state"] == "READY", entries[ready]
    expected = {
        BAD_NAME: ("unexpected input 'nope'", "features"),
        BAD_TYPE: ("unexpected datatype TYPE_INT32", "TYPE_FP32"),
        BAD_SIGNATURE: ("no signature 'missing'", "serving_default"),
    }
    for name, words in expected.items():
        entry = entries[name]
        assert entry["state"] == "UNAVAILABLE", entry
        assert "\n" not in entry["reason"]
        for word in words:
            assert word in entry["reason"], entry


# ---- TF-Serving's REST API ----

def test_v1_instances_form(http: httpx.Client, tf_models: dict[str, Path]) -> None:
    x = np.random.default_rng(2).standard_normal((3, 8)).astype(np.float32)
    response = http.post(f"/v1/models/{MLP}:predict", json={"instances": x.tolist()})
    assert response.status_code == 200, response.text
    expected = _reference(tf_models[MLP], "serving_default", features=x)["output_0"]
    np.testing.assert_allclose(np.array(response.json()["predictions"], dtype=np.float32), expected,
                               rtol=RTOL, atol=ATOL)
    named = http.post(f"/v1/models/{MLP}/versions/1:predict",
                      json={"signature_name": "serving_default", "instances": [{"features": r} for r in x.tolist()]})
    assert named.status_code == 200, named.text
    np.testing.assert_allclose(np.array(named.json()["predictions"], dtype=np.float32), expected,
                               rtol=RTOL, atol=ATOL)


def test_v1_strings_in_the_models_own_shape(http: httpx.Client, tf_models: dict[str, Path]) -> None:
    # TF-Serving's clients send a [None] string tensor as a flat list, with raw bytes as {"b64": ...}.
    raw = b"\xff\xfeimg"
    response = http.post(f"/v1/models/{STRINGS}:predict",
                         json={"instances": ["hello", {"b64": base64.b64encode(raw).decode()}]})
    assert response.status_code == 200, response.text
    expected = _reference(tf_models[STRINGS], "serving_default", text=np.array([b"hello", raw], dtype=np.object_))
    predictions = response.json()["predictions"]
    assert [p["length"] for p in predictions] == expected["length"].tolist()
    # One non-UTF-8 value makes the whole output base64 (TF-Serving's rule for binary outputs).
    assert [base64.b64decode(p["upper"]["b64"]) for p in predictions] == expected["upper"].tolist()
    text = http.post(f"/v1/models/{STRINGS}:predict", json={"inputs": {"text": ["abc", "Zz"]}})
    assert text.status_code == 200, text.text
    assert text.json()["outputs"] == {"length": [3, 2], "upper": ["ABC", "ZZ"]}


def test_v1_inputs_form_with_signature_name(http: httpx.Client, tf_models: dict[str, Path]) -> None:
    x, ids = _two_data()
    body = {"signature_name": TWO_SIGNATURE, "inputs": {"x": x.tolist(), "ids": ids.tolist()}}
    expected = _reference(tf_models[TWO], TWO_SIGNATURE, x=x, ids=ids)
    for model in (TWO, TWO_NAMED):
        response = http.post(f"/v1/models/{model}:predict", json=body)
        assert response.status_code == 200, response.text
        outputs = response.json()["outputs"]
        assert np.array_equal(np.array(outputs["ids_out"] if model == TWO else outputs), expected["ids_out"])
        if model == TWO:
            np.testing.assert_allclose(np.array(outputs["y"], dtype=np.float32), expected["y"], rtol=RTOL, atol=ATOL)
    metadata = http.get(f"/v1/models/{TWO}/metadata").json()["metadata"]["signature_def"]["signature_def"]
    assert list(metadata) == [TWO_SIGNATURE]
    assert set(metadata[TWO_SIGNATURE]["inputs"]) == {"x", "ids"}
    _error(http.post(f"/v1/models/{TWO}:predict", json={**body, "signature_name": "other"}), "other", TWO_SIGNATURE)


# ---- bad input: a clear 400, and the server keeps serving ----

def test_bad_input_is_a_400_and_the_server_keeps_serving(http: httpx.Client, tf_server: ServerProcess,
                                                         tf_models: dict[str, Path]) -> None:
    wrong_type = {"inputs": [{"name": "features", "datatype": "INT32", "shape": [1, 8], "data": [1] * 8}]}
    _error(http.post(f"/v2/models/{MLP}/infer", json=wrong_type), "data-type", "FP32")
    wrong_shape = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 7], "data": [0.5] * 7}]}
    _error(http.post(f"/v2/models/{MLP}/infer", json=wrong_shape), "shape")
    unknown = {"inputs": [{"name": "nope", "datatype": "FP32", "shape": [1, 8], "data": [0.5] * 8}]}
    _error(http.post(f"/v2/models/{MLP}/infer", json=unknown), "features")  # the missing one
    _error(http.post(f"/v1/models/{MLP}:predict", json={"instances": [[1.0, 2.0]]}), "shape")
    _error(http.post(f"/v1/models/{STRINGS}:predict", json={"instances": [3]}), "BYTES")
    _error(http.post(f"/v1/models/{TWO}:predict", json={"inputs": {"x": [[1.0, 2.0, 3.0]] * 2}}), "ids")
    test_keras_mlp("http", tf_server, tf_models)
    test_string_model("grpc", tf_server, tf_models)


def test_thread_parameters_apply_before_tensorflow_starts(tf_models: dict[str, Path], tmp_path: Path,
                                                          server_log: Path) -> None:
    repo = tmp_path / "models"
    shutil.copytree(tf_models[STRINGS], _model_dir(repo, "tf_threads", """
backend: "tensorflow"
parameters { key: "TF_NUM_INTRA_THREADS" value { string_value: "1" } }
parameters { key: "TF_NUM_INTER_THREADS" value { string_value: "2" } }
"""))
    process = start_server(repo, server_log)
    try:
        text = np.array([[b"ok"]], dtype=np.object_)
        served = infer_tensors("http", process, "tf_threads", {"text": (text, "BYTES")}, ["upper"])
        assert served["upper"].tolist() == [[b"OK"]]
        log = process.log()
        assert "TF_NUM_INTRA_THREADS=1 set by model 'tf_threads'" in log
        assert "TF_NUM_INTER_THREADS=2 set by model 'tf_threads'" in log
        assert "ignored" not in log
    finally:
        process.stop()
