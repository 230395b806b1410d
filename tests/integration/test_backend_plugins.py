"""Backends from other packages (the `inferd.backends` entry-point group): the worked example in
examples/custom_backend is pip-installed into a folder of its own, put on the server's PYTHONPATH, and serves
its models (auto-completed from the file, or named in a config) exactly as numpy computes them (float32, 1e-6).
A plugin that cannot be imported costs only its models; one cannot take over a built-in backend's name."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from clients import make_input
from serving import ServerProcess, start_server

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "custom_backend"
TOLERANCE = 1e-6


def _install(source: Path, target: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(source)], check=True, capture_output=True, timeout=300)


def _broken_plugin(root: Path) -> Path:
    """A package whose entry points name a module that fails to import, and one that claims 'onnxruntime'."""
    (root / "src" / "broken_plugin").mkdir(parents=True)
    (root / "src" / "broken_plugin" / "__init__.py").write_text("raise ImportError('this plugin is broken')\n")
    (root / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=68"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "broken-plugin"\nversion = "0.0.1"\n'
        '[project.entry-points."inferd.backends"]\nbroken = "broken_plugin:Backend"\n'
        'onnxruntime = "inferd_numpy_linear:NumpyLinearBackend"\n'
        '[tool.setuptools.packages.find]\nwhere = ["src"]\n')
    return root


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, dict[str, np.ndarray]]]:
    site = tmp_path_factory.mktemp("plugin-site")
    _install(EXAMPLE, site)
    _install(_broken_plugin(tmp_path_factory.mktemp("broken")), site)
    repo = tmp_path_factory.mktemp("plugins") / "models"
    rng = np.random.default_rng(7)
    weights = {}
    for name in ("linear_auto", "linear_config"):
        (repo / name / "1").mkdir(parents=True)
        weight, bias = rng.normal(size=(5, 3)).astype(np.float32), rng.normal(size=3).astype(np.float32)
        np.savez(repo / name / "1" / "model.npz", weight=weight, bias=bias)
        weights[name] = (weight, bias)
    (repo / "linear_config" / "config.pbtxt").write_text(
        'backend: "numpy_linear"\nmax_batch_size: 0\n'
        'input [ { name: "features" data_type: TYPE_FP32 dims: [ 2, 5 ] } ]\n'
        'output [ { name: "scores" data_type: TYPE_FP32 dims: [ 2, 3 ] } ]\n')
    (repo / "uses_broken" / "1").mkdir(parents=True)
    (repo / "uses_broken" / "config.pbtxt").write_text('backend: "broken"\n')
    pythonpath = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    server = start_server(repo, tmp_path_factory.mktemp("logs") / "inferd-plugins.log", "--strict-readiness=false",
                          env={"PYTHONPATH": pythonpath})
    x = rng.normal(size=(4, 5)).astype(np.float32)
    expected = {"x": x, "linear_auto": x @ weights["linear_auto"][0] + weights["linear_auto"][1],
                "x2": x[:2], "linear_config": x[:2] @ weights["linear_config"][0] + weights["linear_config"][1]}
    yield server, expected
    server.stop()


def test_plugin_model_autocompletes_and_answers(setup: tuple[ServerProcess, dict[str, np.ndarray]]) -> None:
    server, expected = setup
    config = httpx.get(f"{server.base_url}/v2/models/linear_auto/config", timeout=30).json()
    assert config["backend"] == "numpy_linear"
    assert config["max_batch_size"] == 64 and "dynamic_batching" in config
    assert [(t["name"], t["data_type"], t["dims"]) for t in config["input"]] == [("INPUT0", "TYPE_FP32", [5])]
    assert [(t["name"], t["data_type"], t["dims"]) for t in config["output"]] == [("OUTPUT0", "TYPE_FP32", [3])]
    http = httpclient.InferenceServerClient(server.http_url)
    grpc = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        for result in (http.infer("linear_auto", [make_input(httpclient, "INPUT0", expected["x"], "FP32", False)]),
                       grpc.infer("linear_auto", [make_input(grpcclient, "INPUT0", expected["x"], "FP32")])):
            np.testing.assert_allclose(result.as_numpy("OUTPUT0"), expected["linear_auto"], rtol=TOLERANCE,
                                       atol=TOLERANCE)
    finally:
        http.close()
        grpc.close()


def test_plugin_named_in_config(setup: tuple[ServerProcess, dict[str, np.ndarray]]) -> None:
    server, expected = setup
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        result = client.infer("linear_config", [make_input(httpclient, "features", expected["x2"], "FP32", True)])
    finally:
        client.close()
    np.testing.assert_allclose(result.as_numpy("scores"), expected["linear_config"], rtol=TOLERANCE, atol=TOLERANCE)


def test_broken_plugin_costs_only_its_models(setup: tuple[ServerProcess, dict[str, np.ndarray]]) -> None:
    server, _ = setup
    rows = {r["name"]: r for r in httpx.post(f"{server.base_url}/v2/repository/index", timeout=30).json()}
    assert rows["uses_broken"]["state"] == "UNAVAILABLE"
    assert "unknown backend 'broken'" in rows["uses_broken"]["reason"]
    assert rows["linear_auto"]["state"] == "READY"
    log = server.log()
    assert "backend plugin 'broken'" in log and "this plugin is broken" in log
    assert "backend plugin 'onnxruntime'" in log and "built-in backend" in log
