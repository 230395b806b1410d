"""Triton ensembles served by `inferd serve`, called with tritonclient over HTTP and gRPC.

`pipeline` is a Python preprocessing model (`pre`: 2x + 1, and an error for a negative first value) → an ONNX
model (`scorer`: a fixed 4×3 matrix product) → a Python postprocessing model (`post`: softmax and the arg-max
label). Its answers must equal the three models called one after the other by the client. `fork` runs two slow
Python models on the same input; each reports when it started and ended, so the test sees them overlap.
"""

from __future__ import annotations

import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from clients import infer_tensors
from ensemble_models import WEIGHTS, ensemble, tensor, write_scorer
from serving import ServerProcess, start_server

PROTOCOLS = ["http", "grpc"]

PRE_PY = """
    import numpy as np
    import triton_python_backend_utils as pb_utils


    class TritonPythonModel:
        def execute(self, requests):
            responses = []
            for request in requests:
                raw = pb_utils.get_input_tensor_by_name(request, "RAW").as_numpy()
                if (raw[:, 0] < 0).any():
                    error = pb_utils.TritonError("pre: a negative first value cannot be scaled")
                    responses.append(pb_utils.InferenceResponse(error=error))
                    continue
                scaled = (raw * 2 + 1).astype(np.float32)
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("SCALED", scaled)]))
            return responses
"""

POST_PY = """
    import numpy as np
    import triton_python_backend_utils as pb_utils


    class TritonPythonModel:
        def execute(self, requests):
            responses = []
            for request in requests:
                logits = pb_utils.get_input_tensor_by_name(request, "LOGITS").as_numpy().astype(np.float64)
                exp = np.exp(logits - logits.max(axis=1, keepdims=True))
                prob = (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)
                labels = np.array([[f"class_{i}".encode()] for i in logits.argmax(axis=1)], dtype=object)
                responses.append(pb_utils.InferenceResponse(
                    [pb_utils.Tensor("PROB", prob), pb_utils.Tensor("LABEL", labels)]))
            return responses
"""

SLOW_PY = """
    import time

    import numpy as np
    import triton_python_backend_utils as pb_utils


    class TritonPythonModel:
        def execute(self, requests):
            responses = []
            for request in requests:
                raw = pb_utils.get_input_tensor_by_name(request, "RAW").as_numpy()
                start = time.time()
                time.sleep(0.5)
                span = np.array([[start, time.time()]] * raw.shape[0], dtype=np.float64)
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("SPAN", span)]))
            return responses
"""


def python_model(repo: Path, name: str, source: str, inputs: str, outputs: str) -> None:
    folder = repo / name
    (folder / "1").mkdir(parents=True)
    (folder / "1" / "model.py").write_text(textwrap.dedent(source))
    (folder / "config.pbtxt").write_text(
        f'name: "{name}"\nbackend: "python"\nmax_batch_size: 8\n{inputs}\n{outputs}\n')


PIPELINE = f"""
    max_batch_size: 8
    {tensor("input", "RAW", "TYPE_FP32", [4])}
    output [
      {{ name: "PROB" data_type: TYPE_FP32 dims: [ 3 ] }},
      {{ name: "LABEL" data_type: TYPE_STRING dims: [ 1 ] }}
    ]
    ensemble_scheduling {{
      step [
        {{ model_name: "pre" model_version: -1 input_map {{ key: "RAW" value: "RAW" }}
          output_map {{ key: "SCALED" value: "scaled" }} }},
        {{ model_name: "scorer" model_version: -1 input_map {{ key: "X" value: "scaled" }}
          output_map {{ key: "Y" value: "logits" }} }},
        {{ model_name: "post" model_version: -1 input_map {{ key: "LOGITS" value: "logits" }}
          output_map [ {{ key: "PROB" value: "PROB" }}, {{ key: "LABEL" value: "LABEL" }} ] }}
      ]
    }}
"""

FORK = f"""
    max_batch_size: 8
    {tensor("input", "RAW", "TYPE_FP32", [4])}
    output [
      {{ name: "A" data_type: TYPE_FP64 dims: [ 2 ] }},
      {{ name: "B" data_type: TYPE_FP64 dims: [ 2 ] }}
    ]
    ensemble_scheduling {{
      step [
        {{ model_name: "slow_a" model_version: -1 input_map {{ key: "RAW" value: "RAW" }}
          output_map {{ key: "SPAN" value: "A" }} }},
        {{ model_name: "slow_b" model_version: -1 input_map {{ key: "RAW" value: "RAW" }}
          output_map {{ key: "SPAN" value: "B" }} }}
      ]
    }}
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("ensembles")
    python_model(repo, "pre", PRE_PY, tensor("input", "RAW", "TYPE_FP32", [4]),
                 tensor("output", "SCALED", "TYPE_FP32", [4]))
    python_model(repo, "post", POST_PY, tensor("input", "LOGITS", "TYPE_FP32", [3]),
                 'output [ { name: "PROB" data_type: TYPE_FP32 dims: [ 3 ] },'
                 ' { name: "LABEL" data_type: TYPE_STRING dims: [ 1 ] } ]')
    for name in ("slow_a", "slow_b"):
        python_model(repo, name, SLOW_PY, tensor("input", "RAW", "TYPE_FP32", [4]),
                     tensor("output", "SPAN", "TYPE_FP64", [2]))
    write_scorer(repo)
    ensemble(repo, "pipeline", PIPELINE)
    ensemble(repo, "fork", FORK, empty_version=False)  # no version folder: version 1 all the same
    server = start_server(repo, tmp_path_factory.mktemp("log") / "server.log")
    try:
        yield server
    finally:
        server.stop()


def raw_batch(rows: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.0, 1.0, (rows, 4)).astype(np.float32)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_ensemble_equals_its_steps_run_by_hand(served: ServerProcess, protocol: str) -> None:
    raw = raw_batch(3, seed=1 if protocol == "http" else 2)
    scaled = infer_tensors(protocol, served, "pre", {"RAW": (raw, "FP32")}, ["SCALED"])["SCALED"]
    logits = infer_tensors(protocol, served, "scorer", {"X": (scaled, "FP32")}, ["Y"])["Y"]
    by_hand = infer_tensors(protocol, served, "post", {"LOGITS": (logits, "FP32")}, ["PROB", "LABEL"])
    through = infer_tensors(protocol, served, "pipeline", {"RAW": (raw, "FP32")}, ["PROB", "LABEL"])
    np.testing.assert_array_equal(through["PROB"], by_hand["PROB"])
    assert through["LABEL"].tolist() == by_hand["LABEL"].tolist()
    # And both equal numpy's arithmetic.
    expected = (raw * 2 + 1) @ WEIGHTS
    assert [v[0] for v in through["LABEL"].tolist()] == [f"class_{i}".encode() for i in expected.argmax(axis=1)]
    np.testing.assert_allclose(through["PROB"].sum(axis=1), 1.0, rtol=1e-5)


def test_metadata_config_and_statistics(served: ServerProcess) -> None:
    base = served.base_url
    meta = httpx.get(f"{base}/v2/models/pipeline", timeout=10).json()
    assert meta["platform"] == "ensemble"
    assert [i["name"] for i in meta["inputs"]] == ["RAW"]
    assert {o["name"] for o in meta["outputs"]} == {"PROB", "LABEL"}
    config = httpx.get(f"{base}/v2/models/pipeline/config", timeout=10).json()
    assert [s["model_name"] for s in config["ensemble_scheduling"]["step"]] == ["pre", "scorer", "post"]

    def counts(model: str) -> int:
        stats = httpx.get(f"{base}/v2/models/{model}/stats", timeout=10).json()["model_stats"][0]
        return int(stats["inference_stats"]["success"]["count"])

    before = {m: counts(m) for m in ("pipeline", "pre", "scorer", "post")}
    for seed in range(4):
        infer_tensors("http", served, "pipeline", {"RAW": (raw_batch(1, seed), "FP32")}, ["PROB"])
    after = {m: counts(m) for m in ("pipeline", "pre", "scorer", "post")}
    # Triton counts the ensemble's own requests and, apart, each composing model's.
    assert {m: after[m] - before[m] for m in after} == {"pipeline": 4, "pre": 4, "scorer": 4, "post": 4}


def test_independent_steps_overlap(served: ServerProcess) -> None:
    spans = infer_tensors("grpc", served, "fork", {"RAW": (raw_batch(1, 5), "FP32")}, ["A", "B"])
    (a_start, a_end), (b_start, b_end) = spans["A"][0], spans["B"][0]
    assert a_end - a_start >= 0.45 and b_end - b_start >= 0.45
    # Run one after the other, one would start after the other ended; in parallel they overlap.
    assert max(a_start, b_start) < min(a_end, b_end), spans


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_failing_step_fails_only_its_request(served: ServerProcess, protocol: str) -> None:
    good = raw_batch(2, 7)
    bad = good.copy()
    bad[0, 0] = -1.0
    results: dict[str, Any] = {}

    def call(key: str, raw: np.ndarray) -> None:
        try:
            results[key] = infer_tensors(protocol, served, "pipeline", {"RAW": (raw, "FP32")}, ["PROB"])
        except InferenceServerException as exc:
            results[key] = exc

    threads = [threading.Thread(target=call, args=(f"good{i}", good)) for i in range(3)]
    threads.append(threading.Thread(target=call, args=("bad", bad)))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert isinstance(results["bad"], InferenceServerException)
    assert "a negative first value cannot be scaled" in str(results["bad"])
    for i in range(3):
        assert isinstance(results[f"good{i}"], dict), results[f"good{i}"]
    # The server still serves.
    assert httpx.get(f"{served.base_url}/v2/health/ready", timeout=10).status_code == 200


def test_v1_and_batch_limit(served: ServerProcess) -> None:
    raw = raw_batch(2, 9)
    answer = httpx.post(f"{served.base_url}/v1/models/pipeline:predict", json={"instances": raw.tolist()},
                        timeout=30)
    assert answer.status_code == 200, answer.text
    predictions = answer.json()["predictions"]
    assert len(predictions) == 2
    too_many = raw_batch(9, 10)
    with pytest.raises(InferenceServerException, match="batch"):
        infer_tensors("http", served, "pipeline", {"RAW": (too_many, "FP32")}, ["PROB"])


def test_unloading_a_composing_model_makes_the_ensemble_unavailable(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_scorer(repo)
    ensemble(repo, "chain", f"""
        max_batch_size: 8
        {tensor("input", "IN", "TYPE_FP32", [4])}
        {tensor("output", "OUT", "TYPE_FP32", [3])}
        ensemble_scheduling {{ step [ {{ model_name: "scorer" model_version: -1
          input_map {{ key: "X" value: "IN" }} output_map {{ key: "Y" value: "OUT" }} }} ] }}
    """)
    # Explicit mode: loading the ensemble loads its composing model, as Triton does.
    server = start_server(repo, tmp_path / "server.log", "--model-control-mode", "explicit", "--load-model", "chain")
    try:
        base = server.base_url
        assert httpx.get(f"{base}/v2/models/chain/ready", timeout=10).status_code == 200
        assert httpx.get(f"{base}/v2/models/scorer/ready", timeout=10).status_code == 200
        assert httpx.post(f"{base}/v2/repository/models/scorer/unload", timeout=30).status_code == 200
        assert httpx.get(f"{base}/v2/models/chain/ready", timeout=10).status_code == 400
        rows = {r["name"]: r for r in httpx.post(f"{base}/v2/repository/index", timeout=10).json()}
        assert rows["chain"]["state"] == "UNAVAILABLE"
        assert "scorer" in rows["chain"]["reason"]
        # Loading it again brings the ensemble back.
        assert httpx.post(f"{base}/v2/repository/models/scorer/load", timeout=60).status_code == 200
        assert httpx.get(f"{base}/v2/models/chain/ready", timeout=10).status_code == 200
        out = infer_tensors("http", server, "chain", {"IN": (raw_batch(1, 3), "FP32")}, ["OUT"])["OUT"]
        np.testing.assert_allclose(out, raw_batch(1, 3) @ WEIGHTS, rtol=1e-6)
    finally:
        server.stop()
