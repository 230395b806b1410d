"""A pipeline stage added from outside the package runs for every protocol, without touching a front door.

The stage module is written by the test into a folder of its own (not part of inferd), installed with
`--pipeline-stage MODULE:FACTORY` on `inferd serve` and `inferd microservice`. It records each request it sees
(protocol, model, a header) and refuses requests that carry `x-stage-verdict: refuse` with PERMISSION_DENIED —
what an authentication stage does — and its finish callback records each request's outcome.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from models import SIMPLE, add_simple
from serving import Microservice, ServerProcess, start_server

STAGE_SOURCE = '''
import json
import os

from inferd.types import ErrorKind, InferError


class Recorder:
    name = "recorder"  # no `before` / `after`: before "admit" (the model is known and counting; nothing queued)

    def __init__(self, path):
        self.path = path

    def _write(self, record):
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\\n")

    def __call__(self, call):
        verdict = call.context.header("x-stage-verdict")
        self._write({"event": "seen", "protocol": call.context.protocol, "model": call.model.name,
                     "verdict": verdict})
        call.on_finish(lambda c: self._write({"event": "done", "protocol": c.context.protocol,
                                              "ok": c.error is None}))
        if verdict == "refuse":
            raise InferError(ErrorKind.PERMISSION_DENIED, "refused by the recorder stage")


def make(server):
    return Recorder(os.environ["RECORD_FILE"])
'''

SELDON_MODEL = '''
class Doubler:
    def predict(self, features, feature_names):
        return [[2 * v for v in row] for row in features]
'''


@pytest.fixture(scope="module")
def stage_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("stage_plugin")
    (folder / "recording_stage.py").write_text(STAGE_SOURCE)
    (folder / "doubler.py").write_text(SELDON_MODEL)
    return folder


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture(scope="module")
def served(stage_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Path]]:
    root = tmp_path_factory.mktemp("stage_serve")
    repo = root / "models"
    repo.mkdir()
    add_simple(repo)
    record = root / "records.jsonl"
    env = {"PYTHONPATH": str(stage_folder), "RECORD_FILE": str(record)}
    process = start_server(repo, root / "server.log", "--pipeline-stage", "recording_stage:make", env=env)
    yield process, record
    process.stop()


def _simple_inputs() -> tuple[np.ndarray, np.ndarray]:
    return np.arange(16, dtype=np.int32).reshape(1, 16), np.ones((1, 16), dtype=np.int32)


def _inputs(client: Any, a: np.ndarray, b: np.ndarray) -> list[Any]:
    """`simple`'s two inputs for tritonclient's HTTP or gRPC module."""
    inputs = [client.InferInput("INPUT0", [1, 16], "INT32"), client.InferInput("INPUT1", [1, 16], "INT32")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    return inputs


def test_stage_sees_v2_http_grpc_and_v1(served: tuple[ServerProcess, Path]) -> None:
    process, record = served
    a, b = _simple_inputs()
    http = httpclient.InferenceServerClient(process.http_url)
    inputs = _inputs(httpclient, a, b)
    answer = http.infer(SIMPLE, inputs, headers={"x-stage-verdict": "pass-http"})
    assert (answer.as_numpy("OUTPUT0") == a + b).all()

    grpc = grpcclient.InferenceServerClient(process.grpc_url)
    ginputs = _inputs(grpcclient, a, b)
    answer = grpc.infer(SIMPLE, ginputs, headers={"x-stage-verdict": "pass-grpc"})
    assert (answer.as_numpy("OUTPUT1") == a - b).all()

    v1 = httpx.post(f"{process.base_url}/v1/models/{SIMPLE}:predict", timeout=30,
                    headers={"x-stage-verdict": "pass-v1"},
                    json={"instances": [{"INPUT0": a[0].tolist(), "INPUT1": b[0].tolist()}]})
    assert v1.status_code == 200, v1.text
    assert v1.json()["predictions"][0]["OUTPUT0"] == (a + b)[0].tolist()

    seen = [(r["protocol"], r["verdict"]) for r in _records(record) if r["event"] == "seen"]
    assert seen == [("v2-http", "pass-http"), ("v2-grpc", "pass-grpc"), ("v1", "pass-v1")]
    done = [(r["protocol"], r["ok"]) for r in _records(record) if r["event"] == "done"]
    assert done == [("v2-http", True), ("v2-grpc", True), ("v1", True)]


def test_stage_refusal_is_each_protocols_error(served: tuple[ServerProcess, Path]) -> None:
    process, record = served
    before = len(_records(record))
    a, b = _simple_inputs()
    http = httpclient.InferenceServerClient(process.http_url)
    inputs = _inputs(httpclient, a, b)
    with pytest.raises(InferenceServerException) as http_error:
        http.infer(SIMPLE, inputs, headers={"x-stage-verdict": "refuse"})
    assert http_error.value.status() == "403"
    assert "refused by the recorder stage" in http_error.value.message()

    grpc = grpcclient.InferenceServerClient(process.grpc_url)
    ginputs = _inputs(grpcclient, a, b)
    with pytest.raises(InferenceServerException) as grpc_error:
        grpc.infer(SIMPLE, ginputs, headers={"x-stage-verdict": "refuse"})
    assert grpc_error.value.status() == "StatusCode.PERMISSION_DENIED"

    v1 = httpx.post(f"{process.base_url}/v1/models/{SIMPLE}:predict", timeout=30,
                    headers={"x-stage-verdict": "refuse"},
                    json={"instances": [{"INPUT0": a[0].tolist(), "INPUT1": b[0].tolist()}]})
    assert v1.status_code == 403 and v1.json() == {"error": "refused by the recorder stage"}

    outcomes = [(r["protocol"], r["ok"]) for r in _records(record)[before:] if r["event"] == "done"]
    assert outcomes == [("v2-http", False), ("v2-grpc", False), ("v1", False)]
    # A refused request is a failed request of its model, as any other.
    stats = http.get_inference_statistics(SIMPLE)["model_stats"][0]["inference_stats"]
    assert stats["fail"]["count"] >= 3


def test_stage_sees_seldon_requests(stage_folder: Path, tmp_path: Path) -> None:
    record = tmp_path / "records.jsonl"
    process = Microservice(stage_folder, tmp_path / "microservice.log", "doubler:Doubler",
                           "--pipeline-stage", "recording_stage:make",
                           env={"PYTHONPATH": str(stage_folder), "RECORD_FILE": str(record)})
    try:
        process.wait_live()
        base = process.base_url
        answer = httpx.post(f"{base}/api/v1.0/predictions", timeout=30, headers={"x-stage-verdict": "pass-seldon"},
                            json={"data": {"ndarray": [[1.0, 2.0]]}})
        assert answer.status_code == 200, answer.text
        assert answer.json()["data"]["ndarray"] == [[2.0, 4.0]]
        refused = httpx.post(f"{base}/predict", timeout=30, headers={"x-stage-verdict": "refuse"},
                             json={"data": {"ndarray": [[1.0]]}})
        assert refused.status_code == 403
        assert refused.json()["status"]["info"] == "refused by the recorder stage"
        seen = [(r["protocol"], r["model"], r["verdict"]) for r in _records(record) if r["event"] == "seen"]
        assert seen == [("seldon", "doubler", "pass-seldon"), ("seldon", "doubler", "refuse")]
        stats = httpx.get(f"{base}/v2/models/doubler/stats", timeout=30).json()["model_stats"][0]
        assert stats["inference_stats"]["success"]["count"] == 1  # Seldon calls count as any request
        assert stats["inference_stats"]["fail"]["count"] == 1
    finally:
        process.stop()


README = Path(__file__).resolve().parents[2] / "docs" / "pipeline-stages.md"  # moved from the README


def test_readme_stage_example(tmp_path: Path) -> None:
    """The README's `my_stages.py`, served as the README says, refuses requests without the key in each
    protocol's own form and lets keyed ones through."""
    text = README.read_text()
    start = text.index("```python\n# my_stages.py\n") + len("```python\n")
    (tmp_path / "my_stages.py").write_text(text[start:text.index("```", start)])
    assert "--pipeline-stage my_stages:make" in text
    repo = tmp_path / "models"
    repo.mkdir()
    add_simple(repo)
    process = start_server(repo, tmp_path / "server.log", "--pipeline-stage", "my_stages:make",
                           env={"PYTHONPATH": str(tmp_path)})
    try:
        body = {"inputs": [{"name": n, "datatype": "INT32", "shape": [1, 16], "data": list(range(16))}
                           for n in ("INPUT0", "INPUT1")]}
        url = f"{process.base_url}/v2/models/{SIMPLE}/infer"
        refused = httpx.post(url, json=body, timeout=30)
        assert refused.status_code == 401
        assert refused.json() == {"error": "missing or wrong x-api-key"}
        assert httpx.post(url, json=body, timeout=30, headers={"x-api-key": "s3cret"}).status_code == 200
        a, b = _simple_inputs()
        grpc = grpcclient.InferenceServerClient(process.grpc_url)
        ginputs = _inputs(grpcclient, a, b)
        with pytest.raises(InferenceServerException) as error:
            grpc.infer(SIMPLE, ginputs)
        assert error.value.status() == "StatusCode.UNAUTHENTICATED"
        assert (grpc.infer(SIMPLE, ginputs, headers={"x-api-key": "s3cret"}).as_numpy("OUTPUT0") == a + b).all()
        # Health checks are not inference: the stage is not asked.
        assert httpx.get(f"{process.base_url}/v2/health/ready", timeout=30).status_code == 200
    finally:
        process.stop()
