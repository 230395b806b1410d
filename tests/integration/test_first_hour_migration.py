"""What users of Triton, TF Serving and Seldon bring with them, against a real `inferd serve` (or `inferd
microservice`) on 127.0.0.1:

- Triton's `--backend-config=[onnxruntime,]default-max-batch-size=N`: the max_batch_size auto-complete gives a
  config-less ONNX model whose first dimension is variable (and 0: unbatched); a malformed value stops the server;
- the example repository's `simple_string` is Triton's: NVIDIA's simple_http / simple_grpc string client logic
  (sums and differences of integers written as strings) over tritonclient;
- TF Serving's `:predict` with more instances than max_batch_size: answered whole, in order;
- Seldon's `curl .../predict --data-urlencode 'json={"strData": "hi"}'` against a class whose predict takes a str;
- `inferd bench -i http` without the bench extra names `inferd[bench]`.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from clients import simple_data, simple_inputs
from models import AUTO, SIMPLE, add_auto, add_simple
from serving import HOST, INFERD, Microservice, ServerProcess, start_server

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SIMPLE_STRING = "simple_string"


def _example_builder() -> Any:
    spec = importlib.util.spec_from_file_location("build_repository", EXAMPLES / "build_repository.py")
    assert spec is not None and spec.loader is not None
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    return builder


@pytest.fixture(scope="module")
def migration(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """No flags: config-less `auto_neg` (FP32 [batch, 4] -> its negation) gets Triton's max_batch_size 4; the
    example repository's `simple_string`, written by examples/build_repository.py itself; `simple`."""
    root = tmp_path_factory.mktemp("migration")
    repo = root / "models"
    add_auto(repo)
    add_simple(repo)
    builder = _example_builder()
    builder.build_one(next(s for s in builder.SPECS if s.name == SIMPLE_STRING), repo, True)
    process = start_server(repo, root / "inferd.log")
    yield process
    process.stop()


@pytest.fixture
def http(migration: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=migration.base_url, timeout=30) as client:
        yield client


def assert_serves(server: ServerProcess) -> None:
    a, b = simple_data(1, seed=3)
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        np.testing.assert_array_equal(client.infer(SIMPLE, simple_inputs(httpclient, a, b)).as_numpy("OUTPUT0"), a + b)
    finally:
        client.close()


# ---- --backend-config=default-max-batch-size ----

def _auto_config(server: ServerProcess) -> dict[str, Any]:
    reply = httpx.get(f"{server.base_url}/v2/models/{AUTO}/config", timeout=30)
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


def _neg(server: ServerProcess, rows: int) -> httpx.Response:
    data = np.arange(rows * 4, dtype=np.float32).reshape(rows, 4)
    return httpx.post(f"{server.base_url}/v2/models/{AUTO}/infer", timeout=30, json={"inputs": [
        {"name": "INPUT0", "datatype": "FP32", "shape": [rows, 4], "data": data.ravel().tolist()}]})


def test_default_auto_complete_batch_size_is_tritons_4(migration: ServerProcess) -> None:
    config = _auto_config(migration)
    assert config["max_batch_size"] == 4 and "dynamic_batching" in config


def test_backend_config_sets_the_auto_complete_batch_size(tmp_path: Path, server_log: Path) -> None:
    repo = tmp_path / "models"
    add_auto(repo)
    add_simple(repo)
    server = start_server(repo, server_log, "--backend-config=default-max-batch-size=7",
                          "--backend-config=onnxruntime,default-max-batch-size=6",
                          "--backend-config=tensorflow,version=2")
    try:
        config = _auto_config(server)
        assert config["max_batch_size"] == 6 and "dynamic_batching" in config  # the backend's own value wins
        assert config["input"][0]["dims"] == [4]
        metadata = httpx.get(f"{server.base_url}/v2/models/{AUTO}", timeout=30).json()
        assert metadata["inputs"][0]["shape"] == [-1, 4]
        assert _neg(server, 6).status_code == 200
        too_many = _neg(server, 7)
        assert too_many.status_code == 400 and "batch-size must be <= 6" in too_many.json()["error"]
        assert "--backend-config tensorflow,version is accepted for Triton compatibility and ignored" in server.log()
        assert_serves(server)
    finally:
        server.stop()


def test_default_max_batch_size_0_leaves_the_model_unbatched(tmp_path: Path, server_log: Path) -> None:
    repo = tmp_path / "models"
    add_auto(repo)
    add_simple(repo)
    server = start_server(repo, server_log, "--backend-config=default-max-batch-size=0")
    try:
        config = _auto_config(server)
        assert config.get("max_batch_size", 0) == 0 and "dynamic_batching" not in config
        metadata = httpx.get(f"{server.base_url}/v2/models/{AUTO}", timeout=30).json()
        assert metadata["inputs"][0]["shape"] == [-1, 4]  # the variable dimension is the model's own now
        assert _neg(server, 9).status_code == 200
        assert_serves(server)
    finally:
        server.stop()


def test_malformed_backend_config_stops_the_server(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    add_simple(repo)
    done = subprocess.run([str(INFERD), "serve", "--model-repository", str(repo), "--http-port", "0",
                           "--grpc-port", "0", "--metrics-port", "0", "--http-address", HOST, "--grpc-address", HOST,
                           "--backend-config=onnxruntime,default-max-batch-size="],
                          capture_output=True, text=True, timeout=120, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 1 and "Traceback" not in output, output
    assert "--backend-config option format is" in output and "onnxruntime,default-max-batch-size=" in output


# ---- Triton's simple_string ----

def _string_tensors() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """What NVIDIA's simple_*_string_infer_client.py send: "0".."15" and sixteen "1"s, as [1, 16] BYTES."""
    in0 = np.expand_dims(np.arange(16, dtype=np.int32), axis=0)
    in1 = np.ones((1, 16), dtype=np.int32)
    as_bytes = np.vectorize(lambda x: str(x).encode("utf-8"), otypes=[np.object_])
    return as_bytes(in0), as_bytes(in1), in0 + in1, in0 - in1


@pytest.mark.parametrize("protocol", ["http-binary", "http-json", "grpc"])
def test_simple_string_is_tritons(migration: ServerProcess, protocol: str) -> None:
    input0, input1, expected_sum, expected_diff = _string_tensors()
    module: Any = grpcclient if protocol == "grpc" else httpclient
    client = module.InferenceServerClient(migration.grpc_url if protocol == "grpc" else migration.http_url)
    try:
        metadata = client.get_model_metadata(SIMPLE_STRING, as_json=True) if protocol == "grpc" else \
            client.get_model_metadata(SIMPLE_STRING)
        assert [i["name"] for i in metadata["inputs"]] == ["INPUT0", "INPUT1"]
        assert [o["name"] for o in metadata["outputs"]] == ["OUTPUT0", "OUTPUT1"]
        inputs = [module.InferInput("INPUT0", [1, 16], "BYTES"), module.InferInput("INPUT1", [1, 16], "BYTES")]
        binary = {} if protocol == "grpc" else {"binary_data": protocol == "http-binary"}
        inputs[0].set_data_from_numpy(input0, **binary)
        inputs[1].set_data_from_numpy(input1, **binary)
        outputs = [module.InferRequestedOutput("OUTPUT0", **binary), module.InferRequestedOutput("OUTPUT1", **binary)]
        result = client.infer(SIMPLE_STRING, inputs, outputs=outputs)
        output0, output1 = result.as_numpy("OUTPUT0"), result.as_numpy("OUTPUT1")
    finally:
        client.close()
    # The scripts' own check: each output element, read as an integer, is the sum / the difference.
    for i in range(16):
        assert int(output0[0][i]) == expected_sum[0][i]
        assert int(output1[0][i]) == expected_diff[0][i]
    assert_serves(migration)


def test_simple_string_config_is_tritons(http: httpx.Client) -> None:
    config = http.get(f"/v2/models/{SIMPLE_STRING}/config").json()
    assert config["max_batch_size"] == 8
    assert [(t["name"], t["data_type"]) for t in config["input"]] == [("INPUT0", "TYPE_STRING"),
                                                                       ("INPUT1", "TYPE_STRING")]
    assert [(t["name"], t["data_type"]) for t in config["output"]] == [("OUTPUT0", "TYPE_STRING"),
                                                                        ("OUTPUT1", "TYPE_STRING")]


# ---- TF Serving: more instances than max_batch_size ----

def _success_count(http: httpx.Client, model: str) -> int:
    stats = http.get(f"/v2/models/{model}/stats").json()["model_stats"]
    return sum(int(s["inference_stats"]["success"]["count"]) for s in stats)


def test_v1_predict_with_more_instances_than_max_batch_size(migration: ServerProcess, http: httpx.Client) -> None:
    instances = [[float(i), -float(i), i + 0.5, 2.0 * i] for i in range(10)]
    before = _success_count(http, AUTO)
    reply = http.post(f"/v1/models/{AUTO}:predict", json={"instances": instances})
    assert reply.status_code == 200, reply.text
    assert reply.json()["predictions"] == [[-v for v in row] for row in instances]  # every one, in order
    # It ran as three requests of at most max_batch_size (4) rows: 4 + 4 + 2.
    assert _success_count(http, AUTO) - before == 3
    assert_serves(migration)


def test_v1_columnar_inputs_beyond_max_batch_size(migration: ServerProcess, http: httpx.Client) -> None:
    rows = np.arange(40, dtype=np.float32).reshape(10, 4)
    reply = http.post(f"/v1/models/{AUTO}:predict", json={"inputs": rows.tolist()})
    assert reply.status_code == 200, reply.text
    assert reply.json()["outputs"] == (-rows).tolist()
    named = http.post(f"/v1/models/{AUTO}:predict", json={"instances": [{"INPUT0": r} for r in rows.tolist()]})
    assert named.json()["predictions"] == (-rows).tolist()  # one output: a plain list per instance


def test_v1_batches_within_max_batch_size_run_as_one_request(http: httpx.Client) -> None:
    before = _success_count(http, AUTO)
    reply = http.post(f"/v1/models/{AUTO}:predict", json={"instances": [[1, 2, 3, 4]] * 4})
    assert reply.json()["predictions"] == [[-1, -2, -3, -4]] * 4
    assert _success_count(http, AUTO) - before == 1


def test_v1_wrong_input_name_is_named(migration: ServerProcess, http: httpx.Client) -> None:
    reply = http.post(f"/v1/models/{AUTO}:predict", json={"instances": [{"input0": [1, 2, 3, 4]}]})
    assert reply.status_code == 400
    assert reply.json()["error"] == (f"unexpected inference input 'input0' for model '{AUTO}' (its inputs are "
                                     "INPUT0)")
    assert_serves(migration)


def test_v1_bad_value_in_a_large_request_is_one_clear_error(migration: ServerProcess, http: httpx.Client) -> None:
    instances: list[Any] = [[1.0, 2.0, 3.0, 4.0]] * 9 + [[1.0, 2.0, "x", 4.0]]
    reply = http.post(f"/v1/models/{AUTO}:predict", json={"instances": instances})
    assert reply.status_code == 400 and "INPUT0" in reply.json()["error"]
    assert_serves(migration)


# ---- Seldon: json= form field with strData ----

UPPER = '''
class Upper:
    """Seldon's string example: predict takes the request's strData as a str."""

    def predict(self, X, features_names, meta=None):
        return X.upper()
'''


def test_seldon_form_encoded_str_data(tmp_path: Path) -> None:
    (tmp_path / "Upper.py").write_text(UPPER)
    service = Microservice(tmp_path, tmp_path / "microservice.log", "Upper")
    try:
        service.wait_live()
        # What `curl .../predict --data-urlencode 'json={"strData": "hi"}'` sends.
        reply = httpx.post(f"{service.base_url}/predict", content=b"json=%7B%22strData%22%3A%20%22hi%22%7D",
                           headers={"content-type": "application/x-www-form-urlencoded"}, timeout=30)
        assert reply.status_code == 200, reply.text
        assert reply.json()["strData"] == "HI"
        again = httpx.post(f"{service.base_url}/api/v1.0/predictions", data={"json": '{"strData": "again"}'},
                           timeout=30)
        assert again.json()["strData"] == "AGAIN"
        assert httpx.get(f"{service.base_url}/health/ping", timeout=30).status_code == 200
    finally:
        service.stop()


# ---- bench without its extra ----

def test_bench_without_the_extra_names_inferd_bench(tmp_path: Path) -> None:
    """tritonclient's HTTP asyncio client made unimportable, as it is without the extra's aiohttp."""
    code = ("import sys; sys.modules['tritonclient.http.aio'] = None\n"
            "from inferd.cli import main\n"
            f"sys.exit(main(['bench', '-m', 'simple', '-u', '{HOST}:1', '-i', 'http', '--max-requests', '1']))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False,
                          cwd=tmp_path)
    output = done.stdout + done.stderr
    assert done.returncode != 0 and "Traceback" not in output, output
    assert "pip install 'inferd[bench]'" in output and "tritonclient[http]" not in output
