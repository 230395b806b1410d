"""Seldon Core 1.x language-wrapper classes served by the real `inferd microservice` (seldon-core-microservice's
command line): the Seldon routes answer SeldonMessage JSON in the request's form, with the class's tags() and
metrics() in meta, and Seldon's error JSON for bad data and for a class that raises (the service keeps serving);
the same class answers V2 HTTP and gRPC. Served numbers are compared with the class's own in-process results:
float64 values travel as JSON / FP64 tensors, so they must be equal exactly (tolerance 0)."""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from serving import INFERD, Microservice

# ---- the user classes, written as files the way Seldon users write them (no inferd or seldon_core import) ----

MODEL = '''
import numpy as np

class BadRequest(Exception):
    """Shaped like seldon_core's SeldonMicroserviceException: to_dict() and status_code."""
    status_code = 400
    def __init__(self, message):
        super().__init__(message)
        self.message = message
    def to_dict(self):
        return {"status": {"status": 1, "info": self.message, "code": -1, "reason": "MICROSERVICE_BAD_DATA"}}

class LinearModel:
    def __init__(self, scale=1.0, offset=0, label="", strict=False):
        self.scale, self.offset, self.label, self.strict = scale, offset, label, strict
        self.loaded = 0
        self.calls = 0
    def load(self):
        self.loaded += 1
    def init_metadata(self):
        return {"name": "linear", "versions": ["v1"], "platform": "numpy",
                "inputs": [{"name": "features", "datatype": "FP64", "shape": [-1, 3]}],
                "outputs": [{"name": "scores", "datatype": "FP64", "shape": [-1, 3]}]}
    def predict(self, X, features_names, meta):
        self.calls += 1
        if isinstance(X, str):
            return X.upper()
        if isinstance(X, bytes):
            return X[::-1]
        if isinstance(X, dict):
            if "raise" in X:
                raise ValueError(X["raise"])
            if "reject" in X:
                raise BadRequest(X["reject"])
            return {"keys": sorted(X), "names": list(features_names), "meta_tags": sorted((meta or {}).get("tags", {}))}
        return np.asarray(X, dtype=np.float64) * self.scale + self.offset
    def tags(self):
        return {"label": self.label, "loaded": self.loaded}
    def metrics(self):
        return [{"type": "COUNTER", "key": "predictions", "value": 1},
                {"type": "GAUGE", "key": "calls", "value": self.calls}]
'''

LEGACY = '''
class Legacy:
    """Seldon's oldest template: predict(X, features_names), class_names as an attribute."""
    class_names = ["low", "high"]
    def predict(self, X, features_names):
        return [[float(sum(row)), float(len(features_names))] for row in X]
'''

TRANSFORMER = '''
import numpy as np

class SeldonResponse:
    """Shaped like seldon_core.user_model.SeldonResponse: data plus runtime tags and metrics."""
    def __init__(self, data, tags=None, metrics=None):
        self.data, self.tags, self.metrics = data, tags or {}, metrics or []

class Scaler:
    def transform_input(self, X, features_names, meta=None):
        return np.asarray(X) / 10.0
    def transform_output(self, X, features_names, meta=None):
        return SeldonResponse(np.round(np.asarray(X) * 100.0), tags={"rounded": True},
                              metrics=[{"type": "TIMER", "key": "round_ms", "value": 0.5}])
'''

ROUTER = '''
class Router:
    def __init__(self):
        self.feedback = []
    def route(self, features, feature_names):
        if features[0][0] == 999:
            return "not an int"
        return 1 if features[0][0] > 0 else 0
    def send_feedback(self, features, feature_names, reward, truth, routing=None):
        self.feedback.append((reward, routing))
    def tags(self):
        return {"feedback": [[r, k] for r, k in self.feedback]}
'''

COMBINER = '''
import numpy as np

class Mean:
    def route_raw(self, msg):
        return {"jsonData": {"raw": msg}, "status": {"code": 202, "status": "SUCCESS"}}
    def aggregate(self, features_list, feature_names_list):
        return np.mean([np.asarray(f, dtype=np.float64) for f in features_list], axis=0)
'''

SOURCES = {"linear_model": MODEL, "Legacy": LEGACY, "scaler": TRANSFORMER, "router": ROUTER, "combiner": COMBINER}
PARAMETERS = [{"name": "scale", "value": "2.5", "type": "FLOAT"}, {"name": "offset", "value": "1", "type": "INT"},
              {"name": "label", "value": "v1", "type": "STRING"}, {"name": "strict", "value": "true", "type": "BOOL"}]


@pytest.fixture(scope="module")
def classes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("seldon_classes")
    for module, source in SOURCES.items():
        (folder / f"{module}.py").write_text(source)
    return folder


@pytest.fixture(scope="module")
def services(classes: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Microservice]]:
    logs = tmp_path_factory.mktemp("seldon_logs")
    specs = {
        "model": ("linear_model:LinearModel", "--parameters", json.dumps(PARAMETERS)),
        "legacy": ("Legacy",),  # Seldon's convention: module Legacy holding class Legacy
        "transformer": ("scaler.Scaler", "--service-type", "TRANSFORMER"),
        "router": ("router:Router", "--service-type", "ROUTER", "--model-name", "my-router"),
        "combiner": ("combiner:Mean", "--service-type", "COMBINER"),
    }
    started: dict[str, Microservice] = {}
    try:
        for key, (interface, *extra) in specs.items():  # all start at once, then each is awaited
            started[key] = Microservice(classes, logs / f"{key}.log", interface, *extra)
        for service in started.values():
            service.wait_live()
        yield started
    finally:
        for service in started.values():
            service.stop()


def _load_module(folder: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"seldon_test_{name}", folder / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def local_model(classes: Path) -> Any:
    """The MODEL class in this process, built with the same parameters: the reference for served numbers."""
    return _load_module(classes, "linear_model").LinearModel(scale=2.5, offset=1, label="v1", strict=True)


X = np.array([[1.0, 2.0, 3.0], [4.5, -5.25, 6.125]])


# ---- MODEL over Seldon's routes ----

@pytest.mark.parametrize("path", ["/api/v1.0/predictions", "/predict", "/api/v0.1/predictions"])
def test_ndarray_answers_ndarray_with_tags_and_metrics(services: dict[str, Microservice], local_model: Any,
                                                       path: str) -> None:
    reply = services["model"].post(path, {"data": {"names": ["a", "b", "c"], "ndarray": X.tolist()}})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["data"]["ndarray"] == local_model.predict(X, [], {}).tolist()
    assert body["data"]["names"] == ["t:0", "t:1", "t:2"]
    assert body["meta"]["tags"] == {"label": "v1", "loaded": 1}  # load() ran once, the parameters arrived typed
    metrics = {m["key"]: m for m in body["meta"]["metrics"]}
    assert metrics["predictions"] == {"type": "COUNTER", "key": "predictions", "value": 1}
    assert metrics["calls"]["type"] == "GAUGE" and metrics["calls"]["value"] >= 1


def test_tensor_answers_tensor_and_keeps_request_meta(services: dict[str, Microservice], local_model: Any) -> None:
    request = {"data": {"tensor": {"shape": list(X.shape), "values": X.ravel().tolist()}},
               "meta": {"puid": "req-42", "tags": {"caller": "test"}}}
    body = services["model"].post("/api/v1.0/predictions", request).json()
    assert body["data"]["tensor"]["shape"] == [2, 3]
    assert body["data"]["tensor"]["values"] == local_model.predict(X, [], {}).ravel().tolist()
    assert body["meta"]["puid"] == "req-42"
    assert body["meta"]["tags"] == {"caller": "test", "label": "v1", "loaded": 1}


def test_str_bin_and_json_data(services: dict[str, Microservice]) -> None:
    service = services["model"]
    body = service.post("/predict", {"strData": "hello seldon"}).json()
    assert body["strData"] == "HELLO SELDON"
    assert body["meta"]["tags"]["label"] == "v1"
    body = service.post("/predict", {"binData": base64.b64encode(b"\x00\x01abc").decode()}).json()
    assert base64.b64decode(body["binData"]) == b"cba\x01\x00"
    body = service.post("/predict", {"jsonData": {"b": 1, "a": [1, 2]}, "meta": {"tags": {"t1": 1}}}).json()
    assert body["jsonData"] == {"keys": ["a", "b"], "names": [], "meta_tags": ["t1"]}


def test_form_encoded_query_and_multipart_bodies(services: dict[str, Microservice], local_model: Any) -> None:
    service = services["model"]
    message = json.dumps({"data": {"ndarray": X.tolist()}})
    reply = httpx.post(f"{service.base_url}/api/v1.0/predictions", data={"json": message}, timeout=30)
    assert reply.status_code == 200, reply.text
    assert reply.json()["data"]["ndarray"] == local_model.predict(X, [], {}).tolist()
    reply = httpx.get(f"{service.base_url}/predict", params={"json": json.dumps({"strData": "via get"})}, timeout=30)
    assert reply.json()["strData"] == "VIA GET"
    reply = httpx.post(f"{service.base_url}/predict", files={"strData": (None, "from a form")}, timeout=30)
    assert reply.status_code == 200, reply.text
    assert reply.json()["strData"] == "FROM A FORM"


def test_bad_data_gets_seldon_error_json(services: dict[str, Microservice]) -> None:
    base = services["model"].base_url
    for body in (b"not json at all", b"", b'{"data": {"tensor": {"shape": [2, 2], "values": [1, 2, 3]}}}',
                 b'{"nothing": 1}', b"[1, 2]"):
        reply = httpx.post(f"{base}/api/v1.0/predictions", content=body, timeout=30)
        assert reply.status_code == 400, (body, reply.text)
        status = reply.json()["status"]
        assert status["reason"] == "MICROSERVICE_BAD_DATA" and status["status"] == 1 and status["code"] == -1
        assert status["info"]


def test_class_that_raises_gets_error_and_service_keeps_serving(services: dict[str, Microservice]) -> None:
    service = services["model"]
    reply = service.post("/predict", {"jsonData": {"raise": "boom"}})
    assert reply.status_code == 500
    assert reply.json()["status"]["info"] == "ValueError: boom"
    assert reply.json()["status"]["status"] == 1
    reply = service.post("/predict", {"jsonData": {"reject": "no thanks"}})  # its own SeldonMicroserviceException
    assert reply.status_code == 400
    assert reply.json() == {"status": {"status": 1, "info": "no thanks", "code": -1,
                                       "reason": "MICROSERVICE_BAD_DATA"}}
    assert service.post("/predict", {"strData": "still here"}).json()["strData"] == "STILL HERE"


def test_health_and_metadata(services: dict[str, Microservice]) -> None:
    base = services["model"].base_url
    ping = httpx.get(f"{base}/health/ping", timeout=30)
    assert ping.status_code == 200 and ping.text == "pong"
    status = httpx.get(f"{base}/health/status", timeout=30).json()
    assert status["strData"] == "healthy" and status["meta"]["tags"]["label"] == "v1"
    metadata = httpx.get(f"{base}/metadata", timeout=30).json()
    assert metadata["name"] == "linear" and metadata["platform"] == "numpy" and metadata["custom"] == {}


# ---- MODEL over V2 ----

def test_v2_http_and_grpc_answer_the_same_class(services: dict[str, Microservice], local_model: Any) -> None:
    service = services["model"]
    expected = local_model.predict(X, [], {})
    http = httpclient.InferenceServerClient(service.http_url)
    assert http.is_model_ready("linearmodel")  # the class name in lower case
    metadata = http.get_model_metadata("linearmodel")
    assert metadata["inputs"] == [{"name": "features", "datatype": "FP64", "shape": [-1, 3]}]  # from init_metadata
    assert [o["name"] for o in metadata["outputs"]] == ["scores"]
    for binary in (False, True):
        inp = httpclient.InferInput("features", list(X.shape), "FP64")
        inp.set_data_from_numpy(X, binary_data=binary)
        result = http.infer("linearmodel", [inp])
        np.testing.assert_array_equal(result.as_numpy("scores"), expected)
    grpc = grpcclient.InferenceServerClient(service.grpc_url)
    inp = grpcclient.InferInput("features", list(X.shape), "FP64")
    inp.set_data_from_numpy(X)
    np.testing.assert_array_equal(grpc.infer("linearmodel", [inp]).as_numpy("scores"), expected)
    bad = httpclient.InferInput("features", [1, 4], "FP64")  # the declared shape is checked by the core
    bad.set_data_from_numpy(np.zeros((1, 4)))
    with pytest.raises(Exception, match="unexpected shape"):
        http.infer("linearmodel", [bad])


def test_legacy_two_argument_predict_and_class_names(services: dict[str, Microservice]) -> None:
    service = services["legacy"]
    body = service.post("/predict", {"data": {"names": ["a", "b", "c"], "ndarray": X.tolist()}}).json()
    assert body["data"]["ndarray"] == [[6.0, 3.0], [5.375, 3.0]]
    assert body["data"]["names"] == ["low", "high"]
    assert "tags" not in body["meta"] and "metrics" not in body["meta"]  # a class without tags() / metrics()
    inp = httpclient.InferInput("input", list(X.shape), "FP64")  # the default V2 input
    inp.set_data_from_numpy(X)
    result = httpclient.InferenceServerClient(service.http_url).infer("legacy", [inp])
    np.testing.assert_array_equal(result.as_numpy("output"), [[6.0, 0.0], [5.375, 0.0]])


# ---- TRANSFORMER, ROUTER, COMBINER ----

def test_transformer(services: dict[str, Microservice]) -> None:
    service = services["transformer"]
    body = service.post("/transform-input", {"data": {"ndarray": [[10, 20], [30, 45]]}}).json()
    assert body["data"]["ndarray"] == [[1.0, 2.0], [3.0, 4.5]]
    body = service.post("/transform-output", {"data": {"tensor": {"shape": [1, 2], "values": [0.123, 0.456]}}}).json()
    assert body["data"]["tensor"] == {"shape": [1, 2], "values": [12.0, 46.0]}
    assert body["meta"] == {"tags": {"rounded": True},
                            "metrics": [{"type": "TIMER", "key": "round_ms", "value": 0.5}]}
    inp = httpclient.InferInput("input", [1, 2], "FP64")
    inp.set_data_from_numpy(np.array([[5.0, 7.0]]))
    result = httpclient.InferenceServerClient(service.http_url).infer("scaler", [inp])
    np.testing.assert_array_equal(result.as_numpy("output"), [[0.5, 0.7]])


def test_router_route_and_feedback(services: dict[str, Microservice]) -> None:
    service = services["router"]
    body = service.post("/route", {"data": {"ndarray": [[3.0, 1.0]]}}).json()
    assert body["data"]["ndarray"] == [[1]]
    body = service.post("/route", {"data": {"tensor": {"shape": [1, 2], "values": [-1, 0]}}}).json()
    assert body["data"]["tensor"] == {"shape": [1, 1], "values": [0]}
    reply = service.post("/route", {"data": {"ndarray": [[999]]}})
    assert reply.status_code == 400
    assert reply.json()["status"]["info"] == "Routing response must be int but got not an int"
    feedback = {"request": {"data": {"ndarray": [[3.0, 1.0]]}}, "response": {"meta": {"routing": {"0": 1}}},
                "reward": 0.75, "truth": {"data": {"ndarray": [[1]]}}}
    reply = service.post("/api/v1.0/feedback", feedback)
    assert reply.status_code == 200, reply.text
    assert reply.json()["meta"]["tags"]["feedback"] == [[0.75, 1]]
    inp = httpclient.InferInput("input", [1, 2], "FP64")
    inp.set_data_from_numpy(np.array([[-2.0, 5.0]]))
    result = httpclient.InferenceServerClient(service.http_url).infer("my-router", [inp])  # --model-name
    np.testing.assert_array_equal(result.as_numpy("output"), [[0]])


def test_combiner(services: dict[str, Microservice]) -> None:
    service = services["combiner"]
    messages = [{"data": {"ndarray": [[1.0, 2.0]]}, "meta": {"tags": {"a": 1}}},
                {"data": {"ndarray": [[3.0, 6.0]]}, "meta": {"tags": {"b": 2}}}]
    body = service.post("/aggregate", {"seldonMessages": messages}).json()
    assert body["data"]["ndarray"] == [[2.0, 4.0]]
    assert body["meta"]["tags"] == {"a": 1, "b": 2}
    reply = service.post("/aggregate", {"data": {"ndarray": [1]}})
    assert reply.status_code == 400 and reply.json()["status"]["reason"] == "MICROSERVICE_BAD_DATA"
    reply = service.post("/route", {"strData": "x"})  # a *_raw method answers the whole message, status included
    assert reply.status_code == 202 and reply.json()["jsonData"] == {"raw": {"strData": "x"}}
    # Over V2, the rows of the input along its first dimension are the messages combined.
    inp = httpclient.InferInput("input", [2, 2], "FP64")
    inp.set_data_from_numpy(np.array([[1.0, 2.0], [3.0, 6.0]]))
    result = httpclient.InferenceServerClient(service.http_url).infer("mean", [inp])
    np.testing.assert_array_equal(result.as_numpy("output"), [2.0, 4.0])


def test_bad_interface_or_parameters_exit_with_an_error(classes: Path, tmp_path: Path) -> None:
    for interface, extra in (("no_such_module:Thing", []), ("linear_model:Missing", []),
                             ("linear_model:LinearModel", ["--parameters", '[{"name": "scale", "value": "x", '
                                                                           '"type": "FLOAT"}]']),
                             ("linear_model:LinearModel", ["--persistence"])):
        process = subprocess.run([str(INFERD), "microservice", interface, "--http-port", "0", "--grpc-port", "0",
                                  "--metrics-port", "0", *extra], cwd=classes, capture_output=True, text=True,
                                 timeout=60, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        assert process.returncode == 1, (interface, process.stderr)
