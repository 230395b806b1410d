"""Every framework served by inferd against the framework's own in-process throughput.

Builds one repository with the same MLP (64 -> 256 -> ReLU -> 10, the same seeded weights) in ONNX, TorchScript,
a TensorFlow SavedModel and a Python model (numpy, inferd's minimal class API), and one tree classifier (64
features, 50 trees) in scikit-learn, XGBoost, LightGBM and as an MLflow model (the scikit-learn forest). Starts
`inferd serve` on free 127.0.0.1 ports with all of them (dynamic batching on), and for each model runs a
fixed-duration load of batch-1 V2 binary requests at
each concurrency (hey when installed, else the Python aiohttp loader of bench_core.py). The "in-process" column is
the framework itself called in a loop with the same batch-1 input in this process (one caller, no network): what
a user's own script would get, and the ceiling of a batch-1 server.

Frameworks whose package is not installed are left out with a note.

Usage::

    python benchmarks/bench_frameworks.py [--duration 5] [--concurrency 1,8] [--frameworks onnx,torch,...]
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_core import (
    HOST,
    binary_body,
    free_port,
    hey_load,
    http_post,
    machine_info,
    model_inputs,
    percentiles,
    process_cpu_s,
    python_load,
    run_server,
)

SEED = 20261201
N_IN, N_HIDDEN, N_OUT = 64, 256, 10
BATCHING = "max_batch_size: 32\ndynamic_batching { }\n"
FRAMEWORKS = ("onnx", "torch", "tensorflow", "python", "sklearn", "xgboost", "lightgbm", "mlflow")
Call = Callable[[np.ndarray], object]


@dataclass
class Row:
    model: str
    framework: str
    in_process: float  # calls/s
    served: dict[int, tuple[float, float, float, int]]  # concurrency -> (req/s, p50 ms, p99 ms, errors)
    server_cpu: dict[int, float | None]


def mlp_weights() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(SEED)
    return (rng.normal(0, 0.1, (N_IN, N_HIDDEN)).astype(np.float32), rng.normal(0, 0.1, N_HIDDEN).astype(np.float32),
            rng.normal(0, 0.1, (N_HIDDEN, N_OUT)).astype(np.float32), rng.normal(0, 0.1, N_OUT).astype(np.float32))


def _folder(repo: Path, name: str, config: str | None) -> Path:
    version = repo / name / "1"
    version.mkdir(parents=True)
    if config is not None:
        (repo / name / "config.pbtxt").write_text(config)
    return version


def build_onnx(repo: Path) -> Call:
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    w1, b1, w2, b2 = mlp_weights()
    nodes = [helper.make_node("MatMul", ["INPUT0", "w1"], ["h0"]), helper.make_node("Add", ["h0", "b1"], ["h1"]),
             helper.make_node("Relu", ["h1"], ["h2"]), helper.make_node("MatMul", ["h2", "w2"], ["h3"]),
             helper.make_node("Add", ["h3", "b2"], ["OUTPUT0"])]
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", N_IN])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", N_OUT])],
        [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    path = _folder(repo, "mlp_onnx", f'platform: "onnxruntime_onnx"\n{BATCHING}') / "model.onnx"
    onnx.save(model, str(path))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"INPUT0": x})


def build_torch(repo: Path) -> Call:
    import torch

    w1, b1, w2, b2 = (torch.from_numpy(a) for a in mlp_weights())

    class Mlp(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w1, self.b1 = torch.nn.Parameter(w1), torch.nn.Parameter(b1)
            self.w2, self.b2 = torch.nn.Parameter(w2), torch.nn.Parameter(b2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(x @ self.w1 + self.b1) @ self.w2 + self.b2

    config = (f'platform: "pytorch_libtorch"\n{BATCHING}'
              f'input [ {{ name: "INPUT__0" data_type: TYPE_FP32 dims: [ {N_IN} ] }} ]\n'
              f'output [ {{ name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ {N_OUT} ] }} ]\n'
              'parameters { key: "INTRA_OP_THREAD_COUNT" value { string_value: "1" } }\n')
    path = _folder(repo, "mlp_torch", config) / "model.pt"
    torch.jit.save(torch.jit.script(Mlp().eval()), str(path))
    torch.set_num_threads(1)
    module = torch.jit.load(str(path))

    def call(x: np.ndarray) -> object:
        with torch.inference_mode():
            return module(torch.from_numpy(x)).numpy()

    return call


def build_tensorflow(repo: Path) -> Call:
    import tensorflow as tf

    w1, b1, w2, b2 = mlp_weights()

    class Mlp(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w1, self.b1, self.w2, self.b2 = (tf.Variable(a) for a in (w1, b1, w2, b2))

        @tf.function(input_signature=[tf.TensorSpec([None, N_IN], tf.float32, name="INPUT0")])
        def __call__(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"OUTPUT0": tf.nn.relu(x @ self.w1 + self.b1) @ self.w2 + self.b2}

    module = Mlp()
    path = _folder(repo, "mlp_tensorflow", f'platform: "tensorflow_savedmodel"\n{BATCHING}') / "model.savedmodel"
    tf.saved_model.save(module, str(path), signatures=module.__call__.get_concrete_function())
    signature = tf.saved_model.load(str(path)).signatures["serving_default"]
    key = next(iter(signature.structured_input_signature[1]))
    return lambda x: signature(**{key: tf.constant(x)})


PYTHON_MODEL = '''
import numpy as np

class Mlp:
    def load(self):
        import pathlib
        weights = np.load(pathlib.Path(__file__).with_name("weights.npz"))
        self.w1, self.b1, self.w2, self.b2 = (weights[k] for k in ("w1", "b1", "w2", "b2"))

    def predict(self, inputs):
        x = inputs["INPUT0"]
        return {"OUTPUT0": np.maximum(x @ self.w1 + self.b1, 0) @ self.w2 + self.b2}
'''


def build_python(repo: Path) -> Call:
    config = (f'backend: "python"\n{BATCHING}'
              f'input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ {N_IN} ] }} ]\n'
              f'output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ {N_OUT} ] }} ]\n')
    version = _folder(repo, "mlp_python", config)
    w1, b1, w2, b2 = mlp_weights()
    np.savez(version / "weights.npz", w1=w1, b1=b1, w2=w2, b2=b2)
    (version / "model.py").write_text(PYTHON_MODEL)
    return lambda x: np.maximum(x @ w1 + b1, 0) @ w2 + b2


def _tree_data() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import make_classification

    x, y = make_classification(n_samples=2000, n_features=N_IN, n_informative=16, n_classes=3, random_state=SEED)
    return x.astype(np.float32), y


def build_sklearn(repo: Path) -> Call:
    import joblib
    from sklearn.ensemble import RandomForestClassifier

    x, y = _tree_data()
    forest = RandomForestClassifier(n_estimators=50, max_depth=8, random_state=0, n_jobs=1).fit(x, y)
    joblib.dump(forest, _folder(repo, "trees_sklearn", None) / "model.joblib")
    return forest.predict


def build_xgboost(repo: Path) -> Call:
    import xgboost as xgb

    x, y = _tree_data()
    model = xgb.XGBClassifier(n_estimators=50, max_depth=6, n_jobs=1).fit(x, y)
    model.save_model(_folder(repo, "trees_xgboost", None) / "model.json")
    booster = model.get_booster()
    return lambda rows: booster.inplace_predict(rows)


def build_lightgbm(repo: Path) -> Call:
    import lightgbm as lgb

    x, y = _tree_data()
    model = lgb.LGBMClassifier(n_estimators=50, num_leaves=31, n_jobs=1, verbose=-1).fit(x, y)
    model.booster_.save_model(str(_folder(repo, "trees_lightgbm", None) / "model.txt"))
    booster = model.booster_
    return lambda rows: booster.predict(rows, num_threads=1)


def build_mlflow(repo: Path) -> Call:
    import mlflow.pyfunc
    import mlflow.sklearn
    from mlflow.models import infer_signature
    from sklearn.ensemble import RandomForestClassifier

    x, y = _tree_data()
    forest = RandomForestClassifier(n_estimators=50, max_depth=8, random_state=0, n_jobs=1).fit(x, y)
    folder = repo / "trees_mlflow" / "1"
    folder.parent.mkdir(parents=True)
    # A tensor signature (one FP32 [n, 64] input): the pyfunc takes the array as the forest does.
    mlflow.sklearn.save_model(forest, str(folder), signature=infer_signature(x[:5], forest.predict(x[:5])),
                              serialization_format="cloudpickle", pip_requirements=["scikit-learn"])
    model = mlflow.pyfunc.load_model(str(folder))
    return model.predict


BUILDERS: dict[str, tuple[str, Callable[[Path], Call]]] = {
    "onnx": ("mlp_onnx", build_onnx), "torch": ("mlp_torch", build_torch),
    "tensorflow": ("mlp_tensorflow", build_tensorflow), "python": ("mlp_python", build_python),
    "sklearn": ("trees_sklearn", build_sklearn), "xgboost": ("trees_xgboost", build_xgboost),
    "lightgbm": ("trees_lightgbm", build_lightgbm), "mlflow": ("trees_mlflow", build_mlflow),
}


def in_process(call: Call, x: np.ndarray, duration: float) -> float:
    for _ in range(20):
        call(x)
    count, t0 = 0, time.perf_counter()
    deadline = t0 + duration
    while time.perf_counter() < deadline:
        call(x)
        count += 1
    return count / (time.perf_counter() - t0)


def _fmt(value: float, digits: int = 0) -> str:
    return "-" if value != value else f"{value:,.{digits}f}"


def table(rows: Sequence[Row], concurrency: Sequence[int]) -> str:
    head = ["model", "framework", "in-process calls/s (batch 1)"]
    head += [f"served c={c} req/s (p50 / p99 ms, errors)" for c in concurrency]
    head += [f"c={concurrency[-1]} / in-process", f"server CPU c={concurrency[-1]}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row.model, row.framework, _fmt(row.in_process)]
        for c in concurrency:
            rps, p50, p99, errors = row.served[c]
            cells.append(f"{_fmt(rps)} ({_fmt(p50, 2)} / {_fmt(p99, 2)}, {errors})")
        last = row.served[concurrency[-1]][0]
        cpu = row.server_cpu[concurrency[-1]]
        cells += [f"{last / row.in_process:.1%}" if row.in_process else "-", "-" if cpu is None else f"{cpu:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per load point (default 5)")
    parser.add_argument("--concurrency", type=lambda s: [int(c) for c in s.split(",")], default=[1, 8])
    parser.add_argument("--frameworks", type=lambda s: s.split(","), default=list(FRAMEWORKS))
    parser.add_argument("--loader-procs", type=int, default=2, help="Python loader processes (without hey)")
    parser.add_argument("--no-hey", action="store_true", help="use the Python loader even when hey is installed")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join([sys.executable, *sys.argv] if argv is None else [sys.executable, sys.argv[0], *argv])
    hey = None if args.no_hey else shutil.which("hey")
    loader = "hey" if hey else "Python aiohttp loader (hey not found)" if not args.no_hey else "Python aiohttp loader"
    rows: list[Row] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench_frameworks_") as tmp_name:
        tmp = Path(tmp_name)
        repo = tmp / "models"
        repo.mkdir()
        calls: dict[str, tuple[str, Call]] = {}
        for framework in args.frameworks:
            name, build = BUILDERS[framework]
            try:
                calls[framework] = (name, build(repo))
            except ImportError as exc:
                notes.append(f"{framework} left out: {exc}")
        ports = (free_port(), free_port(), free_port())
        base = f"http://{HOST}:{ports[0]}"
        with run_server(repo, [name for name, _ in calls.values()], ports, tmp / "server.log") as pid:
            for framework, (name, call) in calls.items():
                inputs = model_inputs(base, name)
                x = inputs[0].array.astype(np.float32)
                payload, header_length = binary_body(inputs)
                headers = {"Content-Type": "application/octet-stream",
                           "Inference-Header-Content-Length": str(header_length)}
                url = f"{base}/v2/models/{name}/infer"
                status, answer = http_post(url, payload, headers)
                if status != 200:
                    raise RuntimeError(f"{name}: HTTP {status} {answer[:300]!r}")
                body_path = tmp / f"{name}.body"
                body_path.write_bytes(payload)
                served: dict[int, tuple[float, float, float, int]] = {}
                cpu: dict[int, float | None] = {}
                for c in args.concurrency:
                    cpu0 = process_cpu_s(pid)
                    if hey:
                        lats, errors, wall, _, note = hey_load(url, body_path, headers, c, args.duration)
                    else:
                        lats, errors, wall, _, note = python_load("http", url, payload, headers, c, args.duration,
                                                                  args.loader_procs)
                    cpu1 = process_cpu_s(pid)
                    p50, p99 = percentiles(lats)
                    served[c] = (lats.size / wall, p50, p99, errors)
                    cpu[c] = None if cpu0 is None or cpu1 is None else (cpu1 - cpu0) / wall
                    print(f"{name} c={c}: {lats.size / wall:.0f} req/s p50 {p50:.2f} ms errors {errors} {note}",
                          file=sys.stderr, flush=True)
                ceiling = in_process(call, x, max(1.0, args.duration / 2))
                print(f"{name} in-process: {ceiling:.0f} calls/s", file=sys.stderr, flush=True)
                rows.append(Row(name, framework, ceiling, served, cpu))
    print()
    print(table(rows, args.concurrency))
    print()
    for note in notes:
        print(f"- {note}")
    print(f"Machine: {machine_info()}. Loader: {loader}; batch-1 V2 binary requests.")
    print("In-process: the framework called in a loop from one thread in the benchmark process (intra-op threads 1).")
    print(f"Command: {command}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
