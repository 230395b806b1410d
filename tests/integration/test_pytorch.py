"""The PyTorch backend: real TorchScript modules and torch.export programs served by a real `inferd serve`.

Each served output is compared with what PyTorch itself computes in this process from the same saved file, to
RTOL / ATOL (the server may run requests batched together, which can change float summation order slightly).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from clients import infer_tensors
from serving import ServerProcess, start_server

torch = pytest.importorskip("torch")

# torch.jit.script / save / load warn that TorchScript is deprecated; Triton's pytorch_libtorch models are TorchScript.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

RTOL = 1e-5
ATOL = 1e-6

MLP = "torch_mlp"  # TorchScript, INPUT__0 / OUTPUT__0, batching, thread parameters
NAMED = "torch_named"  # TorchScript, inputs named after forward()'s arguments, two outputs, a KIND_GPU instance
EXPORTED = "torch_export_auto"  # torch.export program with a dynamic batch dim, no config.pbtxt
EXPORTED_STATIC = "torch_export_static"  # torch.export program with fixed shapes, no config.pbtxt
NO_CONFIG = "torch_script_no_config"  # TorchScript without config.pbtxt: UNAVAILABLE


class Mlp(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TwoInputs(torch.nn.Module):
    def forward(self, scale: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return scale * ids.to(torch.float32) + 1.0, ids * 2


class Export(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.tanh(self.linear(x)), ids + 7


def _version(repo: Path, name: str, config: str | None) -> Path:
    folder = repo / name / "1"
    folder.mkdir(parents=True)
    if config is not None:
        (repo / name / "config.pbtxt").write_text(config)
    return folder


def _build(repo: Path) -> dict[str, Path]:
    torch.manual_seed(0)
    files: dict[str, Path] = {}
    files[MLP] = _version(repo, MLP, """
platform: "pytorch_libtorch"
max_batch_size: 8
input [ { name: "INPUT__0" data_type: TYPE_FP32 dims: [ 8 ] } ]
output [ { name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ 4 ] } ]
dynamic_batching { }
parameters { key: "INTRA_OP_THREAD_COUNT" value { string_value: "2" } }
parameters { key: "INTER_OP_THREAD_COUNT" value { string_value: "1" } }
""") / "model.pt"
    torch.jit.save(torch.jit.script(Mlp().eval()), str(files[MLP]))

    # Named-input form: the config lists the inputs out of argument order; the names say where each goes.
    files[NAMED] = _version(repo, NAMED, """
backend: "pytorch"
max_batch_size: 0
input [
  { name: "ids" data_type: TYPE_INT64 dims: [ 2, 3 ] },
  { name: "scale" data_type: TYPE_FP32 dims: [ 2, 3 ] }
]
output [
  { name: "OUTPUT__1" data_type: TYPE_INT64 dims: [ 2, 3 ] },
  { name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ 2, 3 ] }
]
instance_group [ { kind: KIND_GPU count: 1 } ]
""") / "model.pt"
    torch.jit.save(torch.jit.script(TwoInputs()), str(files[NAMED]))

    example = (torch.randn(2, 4), torch.arange(8, dtype=torch.int64).reshape(2, 4))
    batch = torch.export.Dim("batch", max=64)
    program = torch.export.export(Export().eval(), example, dynamic_shapes={"x": {0: batch}, "ids": {0: batch}})
    files[EXPORTED] = _version(repo, EXPORTED, None) / "model.pt2"
    torch.export.save(program, str(files[EXPORTED]))

    static = torch.export.export(Export().eval(), example)
    files[EXPORTED_STATIC] = _version(repo, EXPORTED_STATIC, None) / "model.pt2"
    torch.export.save(static, str(files[EXPORTED_STATIC]))

    torch.jit.save(torch.jit.script(Mlp().eval()), str(_version(repo, NO_CONFIG, None) / "model.pt"))
    return files


@pytest.fixture(scope="module")
def torch_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return _build(tmp_path_factory.mktemp("pytorch") / "models")


@pytest.fixture(scope="module")
def torch_server(torch_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = torch_models[MLP].parents[2]
    process = start_server(repo, tmp_path_factory.mktemp("logs") / "inferd-torch.log", "--strict-readiness=false")
    yield process
    process.stop()


def _reference(path: Path, *args: np.ndarray) -> list[np.ndarray]:
    """What PyTorch computes in this process from the saved file."""
    module: Any = torch.export.load(str(path)).module() if path.suffix == ".pt2" else torch.jit.load(str(path))
    with torch.inference_mode():
        result = module(*(torch.from_numpy(a) for a in args))
    results = [result] if isinstance(result, torch.Tensor) else list(result)
    return [r.numpy() for r in results]


PROTOCOLS = ["http", "grpc"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_torchscript_mlp(protocol: str, torch_server: ServerProcess, torch_models: dict[str, Path]) -> None:
    x = np.random.default_rng(1).standard_normal((5, 8)).astype(np.float32)
    served = infer_tensors(protocol, torch_server, MLP, {"INPUT__0": (x, "FP32")}, ["OUTPUT__0"])
    (expected,) = _reference(torch_models[MLP], x)
    assert served["OUTPUT__0"].dtype == np.float32
    assert served["OUTPUT__0"].shape == (5, 4)
    np.testing.assert_allclose(served["OUTPUT__0"], expected, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_torchscript_named_inputs(protocol: str, torch_server: ServerProcess, torch_models: dict[str, Path]) -> None:
    rng = np.random.default_rng(2)
    scale = rng.standard_normal((2, 3)).astype(np.float32)
    ids = rng.integers(-50, 50, (2, 3), dtype=np.int64)
    served = infer_tensors(protocol, torch_server, NAMED, {"scale": (scale, "FP32"), "ids": (ids, "INT64")},
                    ["OUTPUT__0", "OUTPUT__1"])
    first, second = _reference(torch_models[NAMED], scale, ids)
    np.testing.assert_allclose(served["OUTPUT__0"], first, rtol=RTOL, atol=ATOL)
    np.testing.assert_array_equal(served["OUTPUT__1"], second)
    assert served["OUTPUT__1"].dtype == np.int64


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("model", [EXPORTED, EXPORTED_STATIC])
def test_exported_program(protocol: str, model: str, torch_server: ServerProcess,
                          torch_models: dict[str, Path]) -> None:
    rows = 3 if model == EXPORTED else 2
    rng = np.random.default_rng(3)
    x = rng.standard_normal((rows, 4)).astype(np.float32)
    ids = rng.integers(0, 100, (rows, 4), dtype=np.int64)
    served = infer_tensors(protocol, torch_server, model, {"INPUT__0": (x, "FP32"), "INPUT__1": (ids, "INT64")},
                    ["OUTPUT__0", "OUTPUT__1"])
    first, second = _reference(torch_models[model], x, ids)
    np.testing.assert_allclose(served["OUTPUT__0"], first, rtol=RTOL, atol=ATOL)
    np.testing.assert_array_equal(served["OUTPUT__1"], second)


def _config(server: ServerProcess, model: str) -> Any:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        return client.get_model_config(model).config
    finally:
        client.close()


def _io(tensors: Any) -> list[tuple[str, str, list[int]]]:
    from tritonclient.grpc import model_config_pb2

    return [(t.name, model_config_pb2.DataType.Name(t.data_type), list(t.dims)) for t in tensors]


def test_autocompleted_config_with_dynamic_batch(torch_server: ServerProcess) -> None:
    config = _config(torch_server, EXPORTED)
    assert config.name == EXPORTED
    assert config.backend == "pytorch"
    assert config.platform == "pytorch_libtorch"
    assert config.max_batch_size == 4
    assert config.HasField("dynamic_batching")
    assert _io(config.input) == [("INPUT__0", "TYPE_FP32", [4]), ("INPUT__1", "TYPE_INT64", [4])]
    assert _io(config.output) == [("OUTPUT__0", "TYPE_FP32", [3]), ("OUTPUT__1", "TYPE_INT64", [4])]
    assert not any(t.HasField("reshape") for t in [*config.input, *config.output])


def test_autocompleted_config_with_fixed_shapes(torch_server: ServerProcess) -> None:
    config = _config(torch_server, EXPORTED_STATIC)
    assert config.backend == "pytorch"
    assert config.platform == "pytorch_libtorch"
    assert config.max_batch_size == 0
    assert not config.HasField("dynamic_batching")
    assert _io(config.input) == [("INPUT__0", "TYPE_FP32", [2, 4]), ("INPUT__1", "TYPE_INT64", [2, 4])]
    assert _io(config.output) == [("OUTPUT__0", "TYPE_FP32", [2, 3]), ("OUTPUT__1", "TYPE_INT64", [2, 4])]


def test_torchscript_config_is_kept(torch_server: ServerProcess) -> None:
    config = _config(torch_server, MLP)
    assert config.backend == "pytorch"
    assert config.platform == "pytorch_libtorch"
    assert config.max_batch_size == 8
    assert _io(config.input) == [("INPUT__0", "TYPE_FP32", [8])]
    assert _io(config.output) == [("OUTPUT__0", "TYPE_FP32", [4])]
    assert config.parameters["INTRA_OP_THREAD_COUNT"].string_value == "2"


def test_torchscript_without_config_is_unavailable(torch_server: ServerProcess) -> None:
    response = httpx.post(f"{torch_server.base_url}/v2/repository/index", json={}, timeout=10.0)
    entries = {entry["name"]: entry for entry in response.json()}
    entry = entries[NO_CONFIG]
    assert entry["state"] == "UNAVAILABLE"
    assert "TorchScript" in entry["reason"] and "auto-completed" in entry["reason"]
    for ready in (MLP, NAMED, EXPORTED, EXPORTED_STATIC):
        assert entries[ready]["state"] == "READY", entries[ready]


def test_bytes_input_is_rejected_clearly(tmp_path: Path, server_log: Path) -> None:
    repo = tmp_path / "models"
    path = _version(repo, "bytes_model", """
platform: "pytorch_libtorch"
max_batch_size: 0
input [ { name: "INPUT__0" data_type: TYPE_STRING dims: [ 1 ] } ]
output [ { name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ 4 ] } ]
""") / "model.pt"
    torch.jit.save(torch.jit.script(Mlp().eval()), str(path))
    process = start_server(repo, server_log, "--strict-readiness=false")
    try:
        response = httpx.post(f"{process.base_url}/v2/repository/index", json={}, timeout=10.0)
        (entry,) = response.json()
        assert entry["state"] == "UNAVAILABLE"
        assert "TYPE_STRING" in entry["reason"] and "pytorch" in entry["reason"]
    finally:
        process.stop()


def test_v1_predict(torch_server: ServerProcess, torch_models: dict[str, Path]) -> None:
    x = np.random.default_rng(4).standard_normal((3, 8)).astype(np.float32)
    response = httpx.post(f"{torch_server.base_url}/v1/models/{MLP}:predict", json={"instances": x.tolist()},
                          timeout=10.0)
    assert response.status_code == 200, response.text
    (expected,) = _reference(torch_models[MLP], x)
    np.testing.assert_allclose(np.array(response.json()["predictions"], dtype=np.float32), expected,
                               rtol=RTOL, atol=ATOL)
