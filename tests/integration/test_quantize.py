"""`inferd quantize`: dynamic INT8, static INT8 (calibrated on a folder of .npz files) and FP16 versions of an MLP
are written as versions 2, 3 and 4 beside the source, the command reports a speed-up and a deviation, and every
version serves over V2 within the stated deviation of the source on a fixed input set.

Stated deviations, as a share of the largest |output| of the source on that set: INT8 within 5 %, FP16 within
0.5 % (8-bit weights and activations against float32, and float16's 11-bit mantissa).
"""

from __future__ import annotations

import contextlib
import io
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from inferd.cli import main
from models import make_model, write_model
from serving import INFERD, ServerProcess, start_server

NAME = "mlp"
INT8_SHARE = 0.05
FP16_SHARE = 0.005
MODES = {2: "dynamic", 3: "static", 4: "fp16"}
CONFIG = """
name: "mlp"
platform: "onnxruntime_onnx"
max_batch_size: 64
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 32 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]
"""


def mlp() -> bytes:
    """32 -> 128 (ReLU) -> 4, MatMul + Add: the node types both INT8 modes quantize."""
    rng = np.random.default_rng(3)
    weights = [numpy_helper.from_array(a.astype(np.float32), n) for n, a in [
        ("w0", rng.standard_normal((32, 128)) / np.sqrt(32)), ("b0", rng.standard_normal(128) * 0.1),
        ("w1", rng.standard_normal((128, 4)) / np.sqrt(128)), ("b1", rng.standard_normal(4) * 0.1)]]
    nodes = [helper.make_node("MatMul", ["INPUT0", "w0"], ["h0"]), helper.make_node("Add", ["h0", "b0"], ["h1"]),
             helper.make_node("Relu", ["h1"], ["h2"]), helper.make_node("MatMul", ["h2", "w1"], ["h3"]),
             helper.make_node("Add", ["h3", "b1"], ["OUTPUT0"])]
    inputs = [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", 32])]
    outputs = [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", 4])]
    return make_model(nodes, inputs, outputs, weights)


def fixed_inputs() -> np.ndarray:
    return np.random.default_rng(11).standard_normal((16, 32)).astype(np.float32)


@pytest.fixture(scope="module")
def quantized(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, str]]:
    """The repository after the three commands, and what each printed."""
    repo = tmp_path_factory.mktemp("quantize") / "models"
    write_model(repo, NAME, mlp(), CONFIG)
    calibration = tmp_path_factory.mktemp("calibration")
    # Static INT8 clips what falls outside the calibrated ranges: the calibration holds the fixed set, as a user's
    # holds inputs like those the model will see.
    np.savez(calibration / "set0.npz", INPUT0=fixed_inputs())
    rng = np.random.default_rng(5)
    for i in range(1, 4):
        np.savez(calibration / f"set{i}.npz", INPUT0=rng.standard_normal((8, 32)).astype(np.float32))
    printed = {}
    for version, mode in MODES.items():
        argv = ["quantize", str(repo / NAME), "--mode", mode, "--runs", "5", "--from-version", "1"]
        if mode == "static":
            argv += ["--calibration", str(calibration)]
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert main(argv) == 0, out.getvalue()
        printed[version] = out.getvalue()
    return repo, printed


@pytest.fixture(scope="module")
def server(quantized: tuple[Path, dict[int, str]],
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = start_server(quantized[0], tmp_path_factory.mktemp("quantize-logs") / "inferd.log")
    yield process
    process.stop()


@pytest.mark.parametrize("version", list(MODES))
def test_each_mode_writes_a_new_version_and_reports(quantized: tuple[Path, dict[int, str]], version: int) -> None:
    repo, printed = quantized
    text = printed[version]
    assert f"wrote {repo / NAME / str(version) / 'model.onnx'} ({MODES[version]}) from version 1" in text
    assert re.search(rf"version {version}\s+[\d.]+ ms\s+speed-up [\d.]+x", text), text
    assert re.search(r"OUTPUT0\s+[\d.e+-]+\s+\(\|output\| up to", text), text
    model = onnx.load(str(repo / NAME / str(version) / "model.onnx"))
    ops = {node.op_type for node in model.graph.node}
    if MODES[version] == "fp16":
        assert any(t.data_type == TensorProto.FLOAT16 for t in model.graph.initializer)
    else:
        assert ops & {"DynamicQuantizeLinear", "MatMulInteger", "QuantizeLinear", "QLinearMatMul"}, ops
    # clients and the config are unchanged: FP32 in, FP32 out
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT


def test_the_config_serves_every_version(quantized: tuple[Path, dict[int, str]]) -> None:
    repo, printed = quantized
    assert "version_policy: { specific: { versions: [ 1, 2, 3, 4 ] } }" in (repo / NAME / "config.pbtxt").read_text()
    assert "so the source and the new version both serve" in printed[4]


@pytest.mark.parametrize("version", list(MODES))
def test_each_version_serves_within_its_deviation(server: ServerProcess, version: int) -> None:
    x = fixed_inputs()
    source = _infer(server, "1", x)
    got = _infer(server, str(version), x)
    share = FP16_SHARE if MODES[version] == "fp16" else INT8_SHARE
    assert np.abs(got - source).max() <= share * np.abs(source).max()
    assert not np.array_equal(got, source)  # it is another model, not the source served twice


def _infer(server: ServerProcess, version: str, x: np.ndarray) -> np.ndarray:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(server.http_url)
    try:
        tensor = httpclient.InferInput("INPUT0", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        return np.asarray(client.infer(NAME, [tensor], model_version=version).as_numpy("OUTPUT0"))
    finally:
        client.close()


def test_an_existing_target_version_is_refused(quantized: tuple[Path, dict[int, str]]) -> None:
    repo, _ = quantized
    run = subprocess.run([str(INFERD), "quantize", str(repo / NAME), "--to-version", "2"], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 2
    assert run.stderr.strip() == f"inferd quantize: --to-version 2: {repo / NAME / '2'} exists: choose another"
