"""`inferd convert`: a small model of each framework becomes a repository folder whose ONNX model matches the
original within the default tolerance (1e-3, the largest absolute output difference), and that folder serves over
V2 with the outputs the original gives.

The models are trained or built here: a torch MLP (TorchScript and torch.export), a TensorFlow SavedModel, a
scikit-learn pipeline on iris, an XGBoost classifier on iris, a LightGBM regressor on diabetes.
"""

from __future__ import annotations

import contextlib
import io
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from clients import infer_tensors
from inferd.cli import main
from inferd.tools.convert import DEFAULT_TOLERANCE
from serving import INFERD, ServerProcess, start_server

RNG = np.random.default_rng(7)


@dataclass
class Case:
    path: Path
    inputs: dict[str, np.ndarray]  # what the served model is asked
    expected: dict[str, np.ndarray]  # what the original answers
    sample: Path | None = None


def _torchscript(folder: Path) -> Case:
    import torch

    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)).eval()
    path = folder / "mlp.pt"
    torch.jit.script(module).save(str(path))
    x = RNG.standard_normal((5, 6)).astype(np.float32)
    np.save(folder / "sample.npy", x)
    with torch.no_grad():
        y = module(torch.from_numpy(x)).numpy()
    return Case(path, {"INPUT__0": x}, {"OUTPUT__0": y}, folder / "sample.npy")


def _exported(folder: Path) -> Case:
    import torch

    torch.manual_seed(1)
    module = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)).eval()
    example = (torch.randn(3, 4),)
    program = torch.export.export(module, example, dynamic_shapes=({0: torch.export.Dim("batch", max=64)},))
    path = folder / "mlp.pt2"
    torch.export.save(program, str(path))
    x = RNG.standard_normal((6, 4)).astype(np.float32)
    with torch.no_grad():
        y = module(torch.from_numpy(x)).numpy()
    return Case(path, {"INPUT__0": x}, {"OUTPUT__0": y})


def _savedmodel(folder: Path) -> Case:
    import tensorflow as tf

    class Dense(tf.Module):
        def __init__(self) -> None:
            self.w = tf.Variable(tf.random.stateless_normal([5, 3], seed=[1, 2]))
            self.b = tf.Variable(tf.constant([0.1, -0.2, 0.3]))

        @tf.function(input_signature=[tf.TensorSpec([None, 5], tf.float32, name="features")])
        def serve(self, features: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"scores": tf.nn.sigmoid(tf.matmul(features, self.w) + self.b)}

    module = Dense()
    path = folder / "savedmodel"
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    x = RNG.standard_normal((4, 5)).astype(np.float32)
    return Case(path, {"features": x}, {"scores": module.serve(tf.constant(x))["scores"].numpy()})


def _sklearn(folder: Path) -> Case:
    import joblib
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = load_iris(return_X_y=True)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(x, y)
    path = folder / "iris.joblib"
    joblib.dump(model, path)
    rows = x[::20].astype(np.float32)
    return Case(path, {"input__0": rows}, {"label": model.predict(rows), "probabilities": model.predict_proba(rows)})


def _xgboost(folder: Path) -> Case:
    import xgboost as xgb
    from sklearn.datasets import load_iris

    x, y = load_iris(return_X_y=True)
    booster = xgb.train({"objective": "multi:softprob", "num_class": 3, "max_depth": 3}, xgb.DMatrix(x, label=y), 10)
    path = folder / "iris.json"
    booster.save_model(str(path))
    rows = x[::20].astype(np.float32)
    probabilities = booster.predict(xgb.DMatrix(rows))
    return Case(path, {"input__0": rows}, {"label": probabilities.argmax(axis=1), "probabilities": probabilities})


def _lightgbm(folder: Path) -> Case:
    import lightgbm as lgb
    from sklearn.datasets import load_diabetes

    x, y = load_diabetes(return_X_y=True)
    booster = lgb.train({"objective": "regression", "verbose": -1, "num_leaves": 8}, lgb.Dataset(x, label=y), 20)
    path = folder / "diabetes.txt"
    booster.save_model(str(path))
    rows = x[::60].astype(np.float32)
    return Case(path, {"input__0": rows}, {"variable": booster.predict(rows)})


BUILDERS: dict[str, Callable[[Path], Case]] = {
    "torchscript": _torchscript, "exported": _exported, "savedmodel": _savedmodel, "sklearn": _sklearn,
    "xgboost": _xgboost, "lightgbm": _lightgbm,
}


@dataclass
class Converted:
    case: Case
    status: int
    output: str


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("converted") / "models"


@pytest.fixture(scope="module")
def converted(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Converted]:
    """Every model converted with `inferd convert` (the command's own entry point) into one repository."""
    folder = tmp_path_factory.mktemp("originals")
    results = {}
    for name, build in BUILDERS.items():
        case = build(folder)
        argv = ["convert", str(case.path), "--output", str(repo), "--name", name]
        if case.sample is not None:
            argv += ["--sample-input", str(case.sample)]
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            status = main(argv)
        results[name] = Converted(case, status, printed.getvalue())
    return results


@pytest.fixture(scope="module")
def server(repo: Path, converted: dict[str, Converted],
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = start_server(repo, tmp_path_factory.mktemp("convert-logs") / "inferd.log")
    yield process
    process.stop()


@pytest.mark.parametrize("name", list(BUILDERS))
def test_converted_model_matches_the_original(repo: Path, converted: dict[str, Converted], name: str) -> None:
    result = converted[name]
    assert result.status == 0, result.output
    line = next(line for line in result.output.splitlines() if line.startswith("largest difference"))
    assert float(line.split()[2]) <= DEFAULT_TOLERANCE
    assert f"within the tolerance {DEFAULT_TOLERANCE:g}" in line
    model_dir = repo / name
    assert (model_dir / "1" / "model.onnx").is_file()
    config = (model_dir / "config.pbtxt").read_text()
    assert 'platform: "onnxruntime_onnx"' in config and "max_batch_size: 8" in config


@pytest.mark.parametrize("name", list(BUILDERS))
def test_converted_folder_serves_the_originals_outputs(server: ServerProcess, converted: dict[str, Converted],
                                                      name: str) -> None:
    case = converted[name].case
    inputs = {n: (a, "FP32") for n, a in case.inputs.items()}
    got = infer_tensors("http", server, name, inputs, list(case.expected))
    for output, want in case.expected.items():
        have = got[output].reshape(want.shape).astype(np.float64)
        assert np.abs(have - want).max() <= DEFAULT_TOLERANCE, (output, have, want)


def test_a_difference_over_the_tolerance_exits_1(converted: dict[str, Converted], tmp_path: Path) -> None:
    """scikit-learn computes in float64 and ONNX in float32: a tolerance of 0 cannot be met."""
    case = converted["sklearn"].case
    run = subprocess.run([str(INFERD), "convert", str(case.path), "--output", str(tmp_path), "--name", "strict",
                          "--tolerance", "0"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "EXCEEDS the tolerance 0" in run.stdout


def test_an_unknown_model_form_is_one_line_and_exit_2(tmp_path: Path) -> None:
    model = tmp_path / "model.bin"
    model.write_bytes(b"\0" * 16)
    run = subprocess.run([str(INFERD), "convert", str(model), "--output", str(tmp_path), "--name", "m"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        f"inferd convert: {model}: unknown model form '.bin' (convert takes .pt, .pt2, a SavedModel folder, "
        ".joblib, .pkl, .json, .ubj or .txt)"]


def test_torchscript_without_a_sample_asks_for_one(converted: dict[str, Converted], tmp_path: Path) -> None:
    run = subprocess.run([str(INFERD), "convert", str(converted["torchscript"].case.path), "--output",
                          str(tmp_path), "--name", "m"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert "give --sample-input" in run.stderr and "Traceback" not in run.stderr


def test_a_program_with_a_fixed_batch_needs_max_batch_size_0(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """A torch.export program exported without torch.export.Dim fixes its first dimension: the batched default
    is refused in one line, and --max-batch-size 0 converts it with its shapes as they are."""
    import torch

    program = torch.export.export(torch.nn.Linear(3, 2).eval(), (torch.randn(4, 3),))
    torch.export.save(program, str(tmp_path / "fixed.pt2"))
    argv = ["convert", str(tmp_path / "fixed.pt2"), "--output", str(tmp_path / "models"), "--name", "fixed"]
    assert main(argv) == 2
    assert "--max-batch-size 8 needs a free first dimension" in capsys.readouterr().err
    assert not (tmp_path / "models" / "fixed" / "1").exists()
    assert main([*argv, "--max-batch-size", "0"]) == 0
    config = (tmp_path / "models" / "fixed" / "config.pbtxt").read_text()
    assert "max_batch_size" not in config and "dims: 4" in config
