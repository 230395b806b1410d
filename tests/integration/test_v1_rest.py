"""TF-Serving's REST API (KServe V1) on a real `inferd serve`: the same answers as V2 for the same data, TF-Serving's
status and metadata shapes, and `{"error": "..."}` errors after which the server keeps serving."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from inferd.frontends.http.v1 import _output_value
from models import AUTO, BROKEN, NOBATCH, SIMPLE, VERSIONED, identity_name
from serving import ServerProcess

BYTES_MODEL = identity_name("BYTES")


@pytest.fixture(scope="module")
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=30.0) as client:
        yield client


def _v2(http: httpx.Client, model: str, tensors: dict[str, np.ndarray], datatype: str,
        version: str = "") -> dict[str, Any]:
    """The V2 answer for the same tensors: {output name: data as nested lists}."""
    inputs = [{"name": n, "datatype": datatype, "shape": list(a.shape), "data": a.ravel().tolist()}
              for n, a in tensors.items()]
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
    response = http.post(path, json={"inputs": inputs})
    assert response.status_code == 200, response.text
    return {o["name"]: np.asarray(o["data"]).reshape(o["shape"]).tolist() for o in response.json()["outputs"]}


def _error(response: httpx.Response, status: int, *words: str) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"error"} and isinstance(body["error"], str), body
    for word in words:
        assert word.lower() in body["error"].lower(), body
    return str(body["error"])


def _still_serving(http: httpx.Client) -> None:
    a = np.arange(16, dtype=np.int32)
    response = http.post(f"/v1/models/{SIMPLE}:predict", json={"instances": [{"INPUT0": a.tolist(),
                                                                              "INPUT1": a.tolist()}]})
    assert response.status_code == 200, response.text
    assert response.json()["predictions"][0]["OUTPUT0"] == (2 * a).tolist()


def _simple_data(batch: int) -> tuple[np.ndarray, np.ndarray]:
    a = np.arange(batch * 16, dtype=np.int32).reshape(batch, 16)
    return a, 3 * a - 7


# ---- predict ----

def test_named_instances_match_v2(http: httpx.Client) -> None:
    a, b = _simple_data(3)
    expected = _v2(http, SIMPLE, {"INPUT0": a, "INPUT1": b}, "INT32")
    instances = [{"INPUT0": a[i].tolist(), "INPUT1": b[i].tolist()} for i in range(3)]
    for path in (f"/v1/models/{SIMPLE}:predict", f"/v1/models/{SIMPLE}/versions/1:predict"):
        response = http.post(path, json={"instances": instances, "signature_name": "serving_default"})
        assert response.status_code == 200, response.text
        predictions = response.json()["predictions"]
        assert len(predictions) == 3
        for i, row in enumerate(predictions):
            assert row == {"OUTPUT0": expected["OUTPUT0"][i], "OUTPUT1": expected["OUTPUT1"][i]}


def test_columnar_inputs_match_v2(http: httpx.Client) -> None:
    a, b = _simple_data(2)
    expected = _v2(http, SIMPLE, {"INPUT0": a, "INPUT1": b}, "INT32")
    response = http.post(f"/v1/models/{SIMPLE}:predict", json={"inputs": {"INPUT0": a.tolist(),
                                                                         "INPUT1": b.tolist()}})
    assert response.status_code == 200, response.text
    assert response.json() == {"outputs": expected}


def test_unnamed_instances_of_a_one_input_model(http: httpx.Client) -> None:
    x = (np.arange(12, dtype=np.float32).reshape(3, 4) - 5.5) / 3
    expected = _v2(http, AUTO, {"INPUT0": x}, "FP32")["OUTPUT0"]
    response = http.post(f"/v1/models/{AUTO}:predict", json={"instances": x.tolist()})
    assert response.status_code == 200, response.text
    assert response.json() == {"predictions": expected}
    columnar = http.post(f"/v1/models/{AUTO}:predict", json={"inputs": x.tolist()})
    assert columnar.status_code == 200, columnar.text
    assert columnar.json() == {"outputs": expected}


def test_model_without_batching_takes_the_stacked_instances_as_its_tensor(http: httpx.Client) -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    expected = _v2(http, NOBATCH, {"INPUT0": x}, "FP32")["OUTPUT0"]
    response = http.post(f"/v1/models/{NOBATCH}:predict", json={"instances": x.tolist()})
    assert response.status_code == 200, response.text
    assert response.json() == {"predictions": expected}


def test_versions_in_the_path(http: httpx.Client) -> None:
    x = [[1, 2, 3, 4]]
    for version in ("1", "2"):
        tensor = np.asarray(x, dtype=np.int32)
        config = http.get(f"/v2/models/{VERSIONED}/versions/{version}").json()
        datatype = config["inputs"][0]["datatype"]
        tensor = tensor.astype({"INT32": np.int32, "FP32": np.float32, "INT64": np.int64}[datatype])
        expected = _v2(http, VERSIONED, {config["inputs"][0]["name"]: tensor}, datatype, version)
        response = http.post(f"/v1/models/{VERSIONED}/versions/{version}:predict", json={"instances": x})
        assert response.status_code == 200, response.text
        assert response.json() == {"predictions": next(iter(expected.values()))}


def test_b64_values_for_bytes_inputs(http: httpx.Client) -> None:
    text = "héllo wörld"
    encoded = {"b64": base64.b64encode(text.encode()).decode()}
    response = http.post(f"/v1/models/{BYTES_MODEL}:predict", json={"instances": [[encoded, "a"], ["b", "c"]]})
    assert response.status_code == 200, response.text
    assert response.json() == {"predictions": [[text, "a"], ["b", "c"]]}  # UTF-8 outputs come back as strings
    expected = _v2(http, BYTES_MODEL, {"INPUT0": np.array([[text, "a"]], dtype=object)}, "BYTES")
    columnar = http.post(f"/v1/models/{BYTES_MODEL}:predict", json={"inputs": [[encoded, "a"]]})
    assert columnar.status_code == 200, columnar.text
    assert columnar.json() == {"outputs": expected["OUTPUT0"]}
    # The b64 value does reach the model as bytes: ONNX string tensors refuse ones that are not UTF-8.
    jpeg = {"b64": base64.b64encode(b"\xff\xd8\xff\xe0 jpeg").decode()}
    _error(http.post(f"/v1/models/{BYTES_MODEL}:predict", json={"instances": [[jpeg]]}), 400, "UTF-8")
    _still_serving(http)


def test_bytes_outputs_rule() -> None:
    """Outputs named *_bytes, or holding any bytes that are not UTF-8, come back as {"b64"}; others as strings."""
    jpeg = b"\xff\xd8\xff"
    mixed = np.array([[jpeg, b"ok"]], dtype=object)
    b64 = [[{"b64": base64.b64encode(jpeg).decode()}, {"b64": base64.b64encode(b"ok").decode()}]]
    assert _output_value("OUTPUT0", mixed) == b64
    assert _output_value("OUTPUT0", np.array([b"ok", "h\u00e9".encode()], dtype=object)) == ["ok", "h\u00e9"]
    assert _output_value("image_bytes", np.array([b"ok"], dtype=object)) == [{"b64": "b2s="}]


# ---- status and metadata ----

def test_status(http: httpx.Client) -> None:
    ok = {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
    assert http.get(f"/v1/models/{SIMPLE}").json() == {"model_version_status": [ok]}
    assert http.get(f"/v1/models/{SIMPLE}/versions/1").json() == {"model_version_status": [ok]}
    both = http.get(f"/v1/models/{VERSIONED}").json()["model_version_status"]
    assert [v["version"] for v in both] == ["2", "1"] and {v["state"] for v in both} == {"AVAILABLE"}
    _error(http.get(f"/v1/models/{SIMPLE}/versions/7"), 404, "version 7")
    _error(http.get("/v1/models/no_such_model"), 404, "no_such_model")
    _error(http.get(f"/v1/models/{BROKEN}"), 404, BROKEN)


def test_metadata(http: httpx.Client) -> None:
    for path in (f"/v1/models/{SIMPLE}/metadata", f"/v1/models/{SIMPLE}/versions/1/metadata"):
        response = http.get(path)
        assert response.status_code == 200, response.text
        doc = response.json()
        assert doc["model_spec"] == {"name": SIMPLE, "signature_name": "", "version": "1"}
        signature = doc["metadata"]["signature_def"]["signature_def"]["serving_default"]
        assert signature["method_name"] == "tensorflow/serving/predict"
        assert set(signature["inputs"]) == {"INPUT0", "INPUT1"}
        assert signature["inputs"]["INPUT0"] == {"dtype": "DT_INT32", "name": "INPUT0",
                                                 "tensor_shape": {"dim": [{"size": "-1"}, {"size": "16"}]}}
        assert set(signature["outputs"]) == {"OUTPUT0", "OUTPUT1"}
    nobatch = http.get(f"/v1/models/{NOBATCH}/metadata").json()["metadata"]["signature_def"]["signature_def"]
    assert nobatch["serving_default"]["inputs"]["INPUT0"]["tensor_shape"] == {"dim": [{"size": "2"},
                                                                                        {"size": "3"}]}
    assert nobatch["serving_default"]["inputs"]["INPUT0"]["dtype"] == "DT_FLOAT"
    _error(http.get("/v1/models/no_such_model/metadata"), 404)


# ---- errors ----

@pytest.mark.parametrize(("path", "body", "status", "words"), [
    ("/v1/models/no_such_model:predict", {"instances": [1]}, 404, ("no_such_model",)),
    (f"/v1/models/{SIMPLE}/versions/9:predict", {"instances": [1]}, 404, ("version 9",)),
    (f"/v1/models/{SIMPLE}:predict", {"instances": 3}, 400, ("instances",)),
    (f"/v1/models/{SIMPLE}:predict", {"instances": []}, 400, ("instances",)),
    (f"/v1/models/{SIMPLE}:predict", {}, 400, ("instances", "inputs")),
    (f"/v1/models/{SIMPLE}:predict", {"instances": [], "inputs": {}}, 400, ("exactly one",)),
    (f"/v1/models/{SIMPLE}:predict", {"instances": [[1] * 16]}, 400, ("2 inputs",)),
    (f"/v1/models/{SIMPLE}:predict", {"instances": [{"INPUT0": [1] * 16}]}, 400, ("INPUT1",)),
    (f"/v1/models/{SIMPLE}:predict", {"instances": [{"INPUT0": [1] * 16, "INPUT1": [1] * 16},
                                                    {"INPUT0": [1] * 16}]}, 400, ("instance 1",)),
    (f"/v1/models/{SIMPLE}:predict", {"instances": [{"INPUT0": [1] * 16, "INPUT1": [1] * 16},
                                                    {"INPUT0": [1] * 15, "INPUT1": [1] * 16}]}, 400, ("INPUT0",)),
    (f"/v1/models/{SIMPLE}:predict", {"instances": [{"INPUT0": [1] * 8, "INPUT1": [1] * 8}]}, 400, ("shape",)),
    (f"/v1/models/{SIMPLE}:predict", {"instances": [{"INPUT0": ["x"] * 16, "INPUT1": [1] * 16}]}, 400,
     ("INT32",)),
    (f"/v1/models/{SIMPLE}:predict", {"instances": [{"NOPE": [1] * 16, "INPUT1": [1] * 16}]}, 400, ("NOPE",)),
    (f"/v1/models/{SIMPLE}:predict", {"inputs": {"INPUT0": [[1] * 16], "INPUT1": [[1] * 16]},
                                      "signature_name": "other"}, 400, ("signature",)),
    (f"/v1/models/{BYTES_MODEL}:predict", {"instances": [[{"b64": "%%%"}]]}, 400, ("base64",)),
    (f"/v1/models/{BYTES_MODEL}:predict", {"instances": [[1, 2]]}, 400, ("BYTES",)),
    (f"/v1/models/{BYTES_MODEL}:predict", {"instances": [["a", "b"], ["c"]]}, 400, ("different lengths",)),
    (f"/v1/models/{SIMPLE}:classify", {"examples": []}, 400, ("not supported",)),
    (f"/v1/models/{SIMPLE}:regress", {"examples": []}, 400, ("not supported",)),
])
def test_bad_requests(http: httpx.Client, path: str, body: dict[str, Any], status: int,
                      words: tuple[str, ...]) -> None:
    _error(http.post(path, json=body), status, *words)
    _still_serving(http)


def test_bad_json_and_methods(http: httpx.Client) -> None:
    _error(http.post(f"/v1/models/{SIMPLE}:predict", content=b"{not json"), 400)
    _error(http.post(f"/v1/models/{SIMPLE}:predict", content=b"[1, 2]"), 400, "object")
    _error(http.get(f"/v1/models/{SIMPLE}:predict"), 405)
    _error(http.post(f"/v1/models/{SIMPLE}"), 405)
    _error(http.get("/v1/models"), 404)
    _error(http.get(f"/v1/models/{SIMPLE}/labels"), 404)
    _still_serving(http)
