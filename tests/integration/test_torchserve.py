"""TorchServe migration: real `.mar` archives (built with the real `torch-model-archiver`) served by `inferd serve`.

The archives are served in Triton's layout (`<model>/1/model.mar`) and TorchServe's model store (a bare `<name>.mar`),
called through TorchServe's inference API (`/predictions/{model}`) and over V2 (tritonclient, BYTES tensors).
Served answers are compared with the same computation done in this process (the handler's steps written out
with Pillow, numpy and PyTorch) to RTOL / ATOL: the same float32 operations in another order of evaluation.
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from serving import ServerProcess, start_server

torch = pytest.importorskip("torch")
Image = pytest.importorskip("PIL.Image")

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

ARCHIVER = Path(sys.executable).parent / "torch-model-archiver"
RTOL = 1e-5
ATOL = 1e-6
LABELS = [f"label_{i}" for i in range(10)]
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)

IMAGE = "ts_image"  # built-in image_classifier, TorchScript, Triton's layout
CUSTOM = "ts_custom"  # BaseHandler subclass, eager model (model file + state dict), bare .mar (model store)
FUNCTION = "ts_function"  # module-level handle(data, context), Triton's layout
EVIL = "ts_evil"  # an archive with a '..' member: refused

CUSTOM_HANDLER = '''
import json

import torch
from ts.torch_handler.base_handler import BaseHandler
from ts.utils.util import PredictionException


class JsonRegressor(BaseHandler):
    """Reads {"x": [4 floats]} per request; answers {"y": [...], "argmax": i} and a header of its own."""

    def preprocess(self, data):
        rows = []
        for row in data:
            doc = row.get("body")
            if isinstance(doc, (bytes, bytearray)):
                doc = json.loads(doc)
            x = doc.get("x") if isinstance(doc, dict) else None
            if not isinstance(x, list) or len(x) != 4:
                raise PredictionException("x must be a list of 4 numbers", 400)
            rows.append(x)
        return torch.tensor(rows, dtype=torch.float32)

    def postprocess(self, data):
        for idx in range(data.shape[0]):
            self.context.set_response_header(idx, "X-Handler", "json-regressor")
        return [{"y": row.tolist(), "argmax": int(row.argmax())} for row in data]
'''

EAGER_MODEL = '''
import torch


class TinyRegressor(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(x)
'''

FUNCTION_HANDLER = '''
calls = {"init": 0}


def handle(data, context):
    if data is None:  # TorchServe initializes a function handler by calling it with no data
        calls["init"] += 1
        return None
    answers = []
    for idx, row in enumerate(data):
        body = row.get("body")
        if isinstance(body, str):
            context.set_response_status(201, "Created", idx)
            answers.append(body.upper())
        else:
            answers.append({
                "fields": {k: type(v).__name__ for k, v in sorted(row.items())},
                "content_type": context.get_request_header(idx, "Content-Type"),
                "model": context.model_name,
                "inits": calls["init"],
                "batch": len(data),
            })
    return answers
'''


class TinyClassifier(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 6, 5, stride=4)
        self.fc = torch.nn.Linear(6, len(LABELS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def _archive(work: Path, name: str, handler: str, serialized: Path, export: Path, *extra: str) -> Path:
    """Run the real torch-model-archiver; the .mar it writes."""
    export.mkdir(parents=True, exist_ok=True)
    subprocess.run([str(ARCHIVER), "--model-name", name, "--version", "1.0", "--serialized-file", str(serialized),
                    "--handler", handler, "--export-path", str(export), "--force", *extra],
                   check=True, cwd=work, capture_output=True)
    return export / f"{name}.mar"


def _build(root: Path) -> dict[str, Any]:
    torch.manual_seed(0)
    work, repo = root / "work", root / "models"
    work.mkdir()
    repo.mkdir()
    built: dict[str, Any] = {}

    classifier = torch.jit.script(TinyClassifier().eval())
    torch.jit.save(classifier, str(work / "classifier.pt"))
    (work / "index_to_name.json").write_text(json.dumps({str(i): label for i, label in enumerate(LABELS)}))
    mar = _archive(work, IMAGE, "image_classifier", work / "classifier.pt", work / "out",
                   "--extra-files", str(work / "index_to_name.json"))
    (repo / IMAGE / "1").mkdir(parents=True)
    mar.rename(repo / IMAGE / "1" / "model.mar")
    built[IMAGE] = classifier

    regressor_dir = work / "eager"
    regressor_dir.mkdir()
    (regressor_dir / "model.py").write_text(EAGER_MODEL)
    (regressor_dir / "handler.py").write_text(CUSTOM_HANDLER)
    namespace: dict[str, Any] = {}
    exec(EAGER_MODEL, namespace)
    regressor = namespace["TinyRegressor"]().eval()
    torch.save(regressor.state_dict(), regressor_dir / "weights.pth")
    _archive(regressor_dir, CUSTOM, "handler.py", regressor_dir / "weights.pth", repo,
             "--model-file", "model.py")
    built[CUSTOM] = regressor

    function_dir = work / "function"
    function_dir.mkdir()
    (function_dir / "echo_handler.py").write_text(FUNCTION_HANDLER)
    (function_dir / "unused.pt").write_bytes(b"")
    # TorchServe's per-model settings: batches of up to 4 gathered for 20 ms, two workers.
    (function_dir / "model-config.yaml").write_text("batchSize: 4\nmaxBatchDelay: 20\nminWorkers: 2\n")
    mar = _archive(function_dir, FUNCTION, "echo_handler.py", function_dir / "unused.pt", work / "out",
                   "--config-file", "model-config.yaml")
    (repo / FUNCTION / "1").mkdir(parents=True)
    mar.rename(repo / FUNCTION / "1" / "model.mar")

    (repo / EVIL / "1").mkdir(parents=True)
    with zipfile.ZipFile(repo / EVIL / "1" / "model.mar", "w") as evil:
        evil.writestr("MAR-INF/MANIFEST.json", json.dumps({"runtime": "python", "model": {
            "modelName": EVIL, "serializedFile": "m.pt", "handler": "base_handler", "modelVersion": "1.0"}}))
        evil.writestr("../escaped.py", "print('written outside the cache')\n")
    built["repo"] = repo
    built["cache"] = root / "cache"
    return built


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return _build(tmp_path_factory.mktemp("torchserve"))


@pytest.fixture(scope="module")
def ts_server(archives: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("INFERD_CACHE_DIR", str(archives["cache"]))
        process = start_server(archives["repo"], tmp_path_factory.mktemp("logs") / "inferd-torchserve.log",
                               "--strict-readiness=false")
    yield process
    process.stop()


def _image(fmt: str, seed: int, size: tuple[int, int] = (80, 60)) -> bytes:
    pixels = (np.random.default_rng(seed).random((size[1], size[0], 3)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt)
    return buffer.getvalue()


def _reference_top5(model: Any, data: bytes) -> dict[str, float]:
    """TorchServe's image_classifier steps, written out here: resize 256, crop 224, normalise, softmax, top 5."""
    image = Image.open(io.BytesIO(data)).convert("RGB")
    width, height = image.size
    if width <= height:
        size = (256, int(256 * height / width))
    else:
        size = (int(256 * width / height), 256)
    image = image.resize(size, Image.Resampling.BILINEAR)
    left, top = round((size[0] - 224) / 2), round((size[1] - 224) / 2)
    image = image.crop((left, top, left + 224, top + 224))
    x = (np.asarray(image, dtype=np.float32) / np.float32(255) - MEAN) / STD
    with torch.inference_mode():
        probs = torch.softmax(model(torch.from_numpy(x.transpose(2, 0, 1).copy())[None]), dim=1)
        top = torch.topk(probs, 5, dim=1)
    return {LABELS[int(c)]: float(p) for c, p in zip(top.indices[0], top.values[0], strict=True)}


def _assert_top5(served: dict[str, float], expected: dict[str, float]) -> None:
    assert list(served) == list(expected)  # the same labels, most probable first
    np.testing.assert_allclose(list(served.values()), list(expected.values()), rtol=RTOL, atol=ATOL)


def _predict(server: ServerProcess, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.post(f"{server.base_url}/predictions/{path}", timeout=60.0, **kwargs)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_image_classifier_top5(fmt: str, ts_server: ServerProcess, archives: dict[str, Any]) -> None:
    data = _image(fmt, seed=1)
    response = _predict(ts_server, IMAGE, content=data)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    _assert_top5(response.json(), _reference_top5(archives[IMAGE], data))


def test_versions_and_put(ts_server: ServerProcess, archives: dict[str, Any]) -> None:
    """`curl -T image.jpg` sends PUT; TorchServe's versions are strings like the archiver's "1.0"."""
    data = _image("PNG", seed=2, size=(50, 90))
    expected = _reference_top5(archives[IMAGE], data)
    for version in ("1", "1.0"):
        _assert_top5(_predict(ts_server, f"{IMAGE}/{version}", content=data).json(), expected)
    put = httpx.put(f"{ts_server.base_url}/predictions/{IMAGE}", content=data, timeout=60.0)
    _assert_top5(put.json(), expected)


def test_image_classifier_over_v2(ts_server: ServerProcess, archives: dict[str, Any]) -> None:
    """The same archive over V2: one BYTES element per request, the answer's JSON in the `response` output."""
    images = [_image("PNG", seed=3), _image("JPEG", seed=4)]
    client = httpclient.InferenceServerClient(ts_server.http_url)
    try:
        body = httpclient.InferInput("body", [2], "BYTES")
        body.set_data_from_numpy(np.array(images, dtype=np.object_))
        result = client.infer(IMAGE, [body], outputs=[httpclient.InferRequestedOutput("response")])
    finally:
        client.close()
    answers = result.as_numpy("response")
    assert answers.shape == (2,)
    for answer, data in zip(answers, images, strict=True):
        _assert_top5(json.loads(answer), _reference_top5(archives[IMAGE], data))

    grpc = grpcclient.InferenceServerClient(ts_server.grpc_url)
    try:
        tensor = grpcclient.InferInput("body", [1], "BYTES")
        tensor.set_data_from_numpy(np.array(images[:1], dtype=np.object_))
        answer = grpc.infer(IMAGE, [tensor]).as_numpy("response")[0]
    finally:
        grpc.close()
    _assert_top5(json.loads(answer), _reference_top5(archives[IMAGE], images[0]))


def test_image_classifier_over_v1(ts_server: ServerProcess, archives: dict[str, Any]) -> None:
    """A TF-Serving / KServe V1 client sends the image as {"b64": ...} and gets the handler's JSON back."""
    data = _image("JPEG", seed=5)
    response = httpx.post(f"{ts_server.base_url}/v1/models/{IMAGE}:predict",
                          json={"instances": [{"b64": base64.b64encode(data).decode()}]}, timeout=60.0)
    assert response.status_code == 200, response.text
    (prediction,) = response.json()["predictions"]
    answer = prediction["response"] if isinstance(prediction, dict) else prediction
    _assert_top5(json.loads(answer), _reference_top5(archives[IMAGE], data))


def test_autocompleted_config(ts_server: ServerProcess) -> None:
    config = httpx.get(f"{ts_server.base_url}/v2/models/{IMAGE}/config", timeout=10.0).json()
    assert config["backend"] == "torchserve"
    assert config["max_batch_size"] == 0
    inputs = [(t["name"], t["data_type"], t["dims"], t.get("optional", False)) for t in config["input"]]
    assert inputs == [("body", "TYPE_STRING", [-1], False), ("headers", "TYPE_STRING", [-1], True)]
    outputs = [(t["name"], t["data_type"], t["dims"]) for t in config["output"]]
    assert outputs == [("response", "TYPE_STRING", [-1]), ("response_meta", "TYPE_STRING", [-1])]


def test_model_config_yaml_sets_batching(ts_server: ServerProcess) -> None:
    config = httpx.get(f"{ts_server.base_url}/v2/models/{FUNCTION}/config", timeout=10.0).json()
    assert config["max_batch_size"] == 4
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 20000
    assert [g["count"] for g in config["instance_group"]] == [2]
    assert [(t["name"], t["dims"]) for t in config["input"]] == [("body", [1]), ("headers", [1])]


def test_batched_requests_get_their_own_answers(ts_server: ServerProcess) -> None:
    """Concurrent requests are gathered into handler batches and each gets the answer to its own body."""
    texts = [f"request number {i}" for i in range(12)]

    def call(text: str) -> httpx.Response:
        return _predict(ts_server, FUNCTION, content=text.encode(), headers={"content-type": "text/plain"})

    with ThreadPoolExecutor(max_workers=6) as pool:
        answers = list(pool.map(call, texts))
    assert [(a.status_code, a.text) for a in answers] == [(201, t.upper()) for t in texts]


def test_custom_class_handler_from_model_store(ts_server: ServerProcess, archives: dict[str, Any]) -> None:
    """A bare ts_custom.mar in the repository folder: BaseHandler subclass, eager model from its state dict."""
    x = [0.5, -1.0, 2.0, 0.25]
    response = _predict(ts_server, CUSTOM, json={"x": x})
    assert response.status_code == 200, response.text
    assert response.headers["x-handler"] == "json-regressor"
    served = response.json()
    with torch.inference_mode():
        expected = archives[CUSTOM](torch.tensor([x]))[0]
    np.testing.assert_allclose(served["y"], expected.numpy(), rtol=RTOL, atol=ATOL)
    assert served["argmax"] == int(expected.argmax())
    # The handler's PredictionException(message, 400) is the answer's code and message.
    bad = _predict(ts_server, CUSTOM, json={"x": [1, 2]})
    assert bad.status_code == 400
    assert bad.json() == {"code": 400, "type": "InternalServerException", "message": "x must be a list of 4 numbers"}
    index = httpx.post(f"{ts_server.base_url}/v2/repository/index", json={}, timeout=10.0).json()
    # Triton's fields (inferd adds each model's memory_bytes beside them).
    assert {"name": CUSTOM, "version": "1", "state": "READY", "reason": ""} in [
        {k: v for k, v in row.items() if k != "memory_bytes"} for row in index]


def test_function_handler_request_forms(ts_server: ServerProcess) -> None:
    """TorchServe's decoding: text -> str, JSON -> object, other bodies -> bytes, multipart -> one entry per field."""
    text = _predict(ts_server, FUNCTION, content=b"hello", headers={"content-type": "text/plain"})
    assert (text.status_code, text.text, text.headers["content-type"]) == (201, "HELLO", "text/plain")

    raw = _predict(ts_server, FUNCTION, content=b"\x00\x01")
    assert raw.json() == {"fields": {"body": "bytes"}, "content_type": None, "model": FUNCTION, "inits": 1,
                          "batch": 1}
    as_json = _predict(ts_server, FUNCTION, json={"a": 1}).json()
    assert as_json["fields"] == {"body": "dict"}
    assert as_json["content_type"] == "application/json"

    form = _predict(ts_server, FUNCTION, files={"data": ("x.bin", b"\x00\x01", "application/octet-stream")},
                    data={"note": "hi"}).json()
    assert form["fields"] == {"data": "bytes", "note": "str"}
    assert form["content_type"].startswith("multipart/form-data")


def test_torchserve_errors(ts_server: ServerProcess) -> None:
    base = ts_server.base_url
    missing = _predict(ts_server, "no_such_model", content=b"x")
    assert missing.status_code == 404
    assert missing.json() == {"code": 404, "type": "ModelNotFoundException",
                              "message": "Model not found: no_such_model"}
    version = _predict(ts_server, f"{IMAGE}/7", content=b"x")
    assert version.status_code == 404
    assert version.json() == {"code": 404, "type": "ModelVersionNotFoundException",
                              "message": f"Model version: 7 does not exist for model: {IMAGE}"}
    # Not an image: the handler raises, and TorchServe answers 503 "Prediction failed" (the reason is in the log).
    bad_image = _predict(ts_server, IMAGE, content=b"not an image")
    assert bad_image.status_code == 503
    assert bad_image.json() == {"code": 503, "type": "InternalServerException", "message": "Prediction failed"}
    assert "UnidentifiedImageError" in ts_server.log()
    unavailable = _predict(ts_server, EVIL, content=b"x")  # its load failed: TorchServe would not have it
    assert unavailable.status_code == 404
    assert unavailable.json() == {"code": 404, "type": "ModelNotFoundException", "message": f"Model not found: {EVIL}"}
    wrong_method = httpx.get(f"{base}/predictions/{IMAGE}", timeout=10.0)
    assert wrong_method.status_code == 405
    assert wrong_method.json()["type"] == "MethodNotAllowedException"
    nowhere = httpx.post(f"{base}/predictions", content=b"x", timeout=10.0)
    assert (nowhere.status_code, nowhere.json()) == (404, {"error": "Not Found"})
    ping = httpx.get(f"{base}/ping", timeout=10.0)
    assert (ping.status_code, ping.json()) == (200, {"status": "Healthy"})
    # The server goes on serving after each error.
    data = _image("PNG", seed=5)
    assert _predict(ts_server, IMAGE, content=data).status_code == 200


def test_unsafe_archive_is_refused(ts_server: ServerProcess, archives: dict[str, Any]) -> None:
    index = httpx.post(f"{ts_server.base_url}/v2/repository/index", json={}, timeout=10.0).json()
    (row,) = [r for r in index if r["name"] == EVIL]
    assert row["state"] == "UNAVAILABLE"
    assert "refusing" in row["reason"] and "'..'" in row["reason"]
    assert not any(p.name == "escaped.py" for p in archives["cache"].rglob("*"))
    assert not (archives["cache"].parent / "escaped.py").exists()
    assert os.listdir(archives["cache"] / "torchserve")  # the good archives were extracted there
