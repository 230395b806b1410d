"""MLflow models: folders written here by `mlflow.sklearn.save_model` and `mlflow.pyfunc.save_model`, served by a
real `inferd serve` through their python_function flavor, answering over V2 HTTP, V2 gRPC and V1 REST what
`mlflow.pyfunc.load_model(...).predict(...)` answers in-process. Labels, integers and strings must be equal;
floating-point outputs within rtol 1e-6 (the same code on the same values, but the server may batch rows
differently, and a matrix product's rounding can depend on the batch). Auto-completed configs are checked field by
field. Covered: scikit-learn with a column-based signature (labels, and probabilities through pyfunc_predict_fn),
the same copied as a subfolder with an input-only signature (output probed), a cloudpickled PythonModel with a
tensor signature, models-from-code with string / double / long columns in and named columns out, named tensors in
and out, and a model without a signature served from its config.pbtxt. A model without a signature or config, and a
model folder with a link out of its version folder, are UNAVAILABLE with the reason."""

from __future__ import annotations

import importlib.util
import os
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from clients import make_input, unavailable_reason
from serving import ServerProcess, start_server

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
pytest.importorskip("mlflow")
pd = pytest.importorskip("pandas")
pytest.importorskip("sklearn")

import mlflow  # noqa: E402
import mlflow.pyfunc  # noqa: E402
import mlflow.sklearn  # noqa: E402
from mlflow.models import infer_signature  # noqa: E402
from sklearn.datasets import load_iris  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402

RTOL = 1e-6
# Given rather than inferred: inferring runs each model in a subprocess, ten seconds a save.
REQUIREMENTS = [f"mlflow-skinny=={mlflow.__version__}", f"pandas=={pd.__version__}", "scikit-learn"]
IRIS_COLUMNS = ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"]

# A custom PythonModel, cloudpickled by mlflow.pyfunc.save_model; its module travels with the model (code_paths).
AFFINE_MODULE = '''
import numpy as np
import mlflow.pyfunc


class Affine(mlflow.pyfunc.PythonModel):
    """numpy in, numpy out: x @ w + b."""

    def __init__(self, w, b):
        self.w, self.b = w, b

    def predict(self, context, model_input, params=None):
        return np.tanh(np.asarray(model_input, dtype=np.float32) @ self.w + self.b).astype(np.float32)
'''

# A models-from-code PythonModel on a DataFrame with a string column, answering a DataFrame of named columns.
GREETER_CODE = '''
import pandas as pd
import mlflow.pyfunc
from mlflow.models import set_model


class Greeter(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return pd.DataFrame({"greeting": "hello " + model_input["city"].str.upper(),
                             "total": model_input["amount"] * model_input["count"],
                             "long_name": model_input["city"].str.len() > 5})


set_model(Greeter())
'''

# Named tensors: a dict of arrays in (one of them a per-row scalar), a dict of arrays out.
MIXER_CODE = '''
import numpy as np
import mlflow.pyfunc
from mlflow.models import set_model


class Mixer(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        a, b = model_input["a"], model_input["b"]
        return {"total": (a.sum(axis=1) * b).astype(np.float32), "scaled": a * np.float32(2)}


set_model(Mixer())
'''


@dataclass
class Case:
    name: str
    inputs: dict[str, tuple[np.ndarray, str]]  # V2 name -> (array with the batch dimension, V2 datatype)
    expected: dict[str, np.ndarray]  # what pyfunc predict answers in-process, shaped as the server gives it
    datatypes: dict[str, str]  # output name -> V2 datatype
    config: dict[str, Any] = field(default_factory=dict)  # expected auto-completed fields


def _column(values: Any) -> np.ndarray:
    array = np.asarray(values)
    return array.reshape(array.shape[0], -1)


def _strings(values: Any) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = [str(v).encode("utf-8") for v in values]
    return out.reshape(-1, 1)


def _import(path: Path, name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Case]]:
    """The model repository and, for each served model, its inputs and MLflow's own in-process outputs."""
    root = tmp_path_factory.mktemp("mlflow")
    repo = root / "models"
    repo.mkdir()
    cases: list[Case] = []
    iris_x, iris_y = load_iris(return_X_y=True, as_frame=True)
    iris_x = iris_x.iloc[::3].reset_index(drop=True)  # 50 rows of every class
    iris_y = iris_y.iloc[::3].reset_index(drop=True)
    iris_inputs = {c: (iris_x[c].to_numpy(np.float64).reshape(-1, 1), "FP64") for c in IRIS_COLUMNS}
    column_io = [(c, "TYPE_FP64", [1], False) for c in IRIS_COLUMNS]
    clf = LogisticRegression(max_iter=1000).fit(iris_x, iris_y)

    # (1) scikit-learn through mlflow.sklearn, a column-based signature from a DataFrame with named columns:
    # labels, and (pyfunc_predict_fn) probabilities.
    path = repo / "iris" / "1"
    mlflow.sklearn.save_model(clf, str(path), signature=infer_signature(iris_x, clf.predict(iris_x)),
                              serialization_format="cloudpickle", pip_requirements=REQUIREMENTS)
    got = mlflow.pyfunc.load_model(str(path)).predict(iris_x)
    cases.append(Case("iris", iris_inputs, {"output__0": _column(got)}, {"output__0": "INT64"},
                      {"input": column_io, "output": [("output__0", "TYPE_INT64", [1], True)]}))
    path = repo / "iris_proba" / "1"
    mlflow.sklearn.save_model(clf, str(path), signature=infer_signature(iris_x, clf.predict_proba(iris_x)),
                              serialization_format="cloudpickle", pyfunc_predict_fn="predict_proba",
                              pip_requirements=REQUIREMENTS)
    got = mlflow.pyfunc.load_model(str(path)).predict(iris_x)
    cases.append(Case("iris_proba", iris_inputs, {"output__0": np.asarray(got)}, {"output__0": "FP64"},
                      {"input": column_io, "output": [("output__0", "TYPE_FP64", [3], False)]}))

    # An artifact folder copied as it is into the version folder (default_model_filename names it), with an input
    # signature only: output__0 is typed by running the model once on its saved input example.
    path = repo / "iris_nested" / "1" / "model"
    mlflow.sklearn.save_model(clf, str(path), signature=infer_signature(iris_x), input_example=iris_x.head(2),
                              serialization_format="cloudpickle", pip_requirements=REQUIREMENTS)
    (repo / "iris_nested" / "config.pbtxt").write_text('backend: "mlflow"\ndefault_model_filename: "model"\n')
    got = mlflow.pyfunc.load_model(str(path)).predict(iris_x)
    cases.append(Case("iris_nested", iris_inputs, {"output__0": _column(got)}, {"output__0": "INT64"},
                      {"input": column_io, "output": [("output__0", "TYPE_INT64", [1], False)]}))

    # (2) a custom PythonModel with a tensor signature: FP32 [-1, 4] in, FP32 [-1, 3] out.
    code = root / "code"
    code.mkdir()
    (code / "inferd_test_affine.py").write_text(textwrap.dedent(AFFINE_MODULE))
    affine = _import(code / "inferd_test_affine.py", "inferd_test_affine")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 4)).astype(np.float32)
    model = affine.Affine(rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=3).astype(np.float32))
    path = repo / "affine" / "1"
    mlflow.pyfunc.save_model(str(path), python_model=model, code_paths=[str(code / "inferd_test_affine.py")],
                             signature=infer_signature(x, model.predict(None, x)), pip_requirements=REQUIREMENTS)
    got = mlflow.pyfunc.load_model(str(path)).predict(x)
    cases.append(Case("affine", {"input__0": (x, "FP32")}, {"output__0": np.asarray(got)}, {"output__0": "FP32"},
                      {"input": [("input__0", "TYPE_FP32", [4], False)],
                       "output": [("output__0", "TYPE_FP32", [3], False)]}))

    # (3) models-from-code on a DataFrame with string, double and long columns, answering named columns.
    (root / "greeter.py").write_text(textwrap.dedent(GREETER_CODE))
    frame = pd.DataFrame({"city": ["paris", "oslo", "zürich", "lima", "kathmandu", "rome"],
                          "amount": [1.5, 2.0, 0.25, 10.0, 3.5, -1.0], "count": np.arange(1, 7, dtype=np.int64)})
    path = repo / "greeter" / "1"
    example = pd.DataFrame({"greeting": ["hello PARIS"], "total": [1.5], "long_name": [False]})
    mlflow.pyfunc.save_model(str(path), python_model=str(root / "greeter.py"),
                             signature=infer_signature(frame, example), pip_requirements=REQUIREMENTS)
    got = mlflow.pyfunc.load_model(str(path)).predict(frame)
    cases.append(Case(
        "greeter",
        {"city": (_strings(frame["city"]), "BYTES"), "amount": (_column(frame["amount"]), "FP64"),
         "count": (_column(frame["count"]), "INT64")},
        {"greeting": _strings(got["greeting"]), "total": _column(got["total"]), "long_name": _column(got["long_name"])},
        {"greeting": "BYTES", "total": "FP64", "long_name": "BOOL"},
        {"input": [("city", "TYPE_STRING", [1], False), ("amount", "TYPE_FP64", [1], False),
                   ("count", "TYPE_INT64", [1], False)],
         "output": [("greeting", "TYPE_STRING", [1], False), ("total", "TYPE_FP64", [1], False),
                    ("long_name", "TYPE_BOOL", [1], False)]}))

    # (4) named tensors in and out; `b` is one INT64 per row (shape [-1]), given to clients as [N, 1].
    (root / "mixer.py").write_text(textwrap.dedent(MIXER_CODE))
    a = rng.normal(size=(12, 3)).astype(np.float32)
    b = np.arange(12, dtype=np.int64) - 4
    path = repo / "mixer" / "1"
    mlflow.pyfunc.save_model(str(path), python_model=str(root / "mixer.py"), pip_requirements=REQUIREMENTS,
                             signature=infer_signature({"a": a, "b": b},
                                                       {"total": np.zeros(12, np.float32), "scaled": a}))
    got = mlflow.pyfunc.load_model(str(path)).predict({"a": a, "b": b})
    cases.append(Case("mixer", {"a": (a, "FP32"), "b": (b.reshape(-1, 1), "INT64")},
                      {"total": _column(got["total"]), "scaled": got["scaled"]},
                      {"total": "FP32", "scaled": "FP32"},
                      {"input": [("a", "TYPE_FP32", [3], False), ("b", "TYPE_INT64", [1], True)],
                       "output": [("total", "TYPE_FP32", [1], True), ("scaled", "TYPE_FP32", [3], False)]}))

    # (5) no signature: with a config.pbtxt it serves, without one it is UNAVAILABLE with the reason.
    array = iris_x.to_numpy(np.float64)
    plain = LogisticRegression(max_iter=1000).fit(array, iris_y.to_numpy())  # fitted without column names
    for name, config in (("nosig_config", True), ("nosig", False)):
        path = repo / name / "1"
        mlflow.sklearn.save_model(plain, str(path), serialization_format="cloudpickle", pip_requirements=REQUIREMENTS)
        if config:
            (repo / name / "config.pbtxt").write_text(textwrap.dedent("""
                backend: "mlflow"
                max_batch_size: 64
                input { name: "input__0" data_type: TYPE_FP64 dims: [4] }
                output { name: "output__0" data_type: TYPE_INT64 dims: [1] }
            """))
    got = mlflow.pyfunc.load_model(str(repo / "nosig_config" / "1")).predict(array)
    cases.append(Case("nosig_config", {"input__0": (array, "FP64")}, {"output__0": _column(got)},
                      {"output__0": "INT64"}))

    # (6) a model folder whose pickle is a link out of the version folder is refused, never loaded.
    outside = root / "elsewhere"
    mlflow.sklearn.save_model(clf, str(outside), signature=infer_signature(iris_x, clf.predict(iris_x)),
                              serialization_format="cloudpickle", pip_requirements=REQUIREMENTS)
    path = repo / "linked" / "1"
    path.mkdir(parents=True)
    for item in outside.iterdir():
        if item.name == "model.pkl":
            os.symlink(item, path / item.name)
        else:
            (path / item.name).write_bytes(item.read_bytes())
    return repo, cases


@pytest.fixture(scope="module")
def cases(built: tuple[Path, list[Case]]) -> list[Case]:
    return built[1]


@pytest.fixture(scope="module")
def server(built: tuple[Path, list[Case]], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = start_server(built[0], tmp_path_factory.mktemp("logs") / "inferd-mlflow.log", "--strict-readiness=false")
    yield process
    process.stop()


NAMES = ["iris", "iris_proba", "iris_nested", "affine", "greeter", "mixer", "nosig_config"]


def _case(cases: list[Case], name: str) -> Case:
    return next(c for c in cases if c.name == name)


def _check(case: Case, name: str, got: np.ndarray, datatype: str) -> None:
    want = case.expected[name]
    assert datatype == case.datatypes[name], (case.name, name)
    assert got.shape == want.shape, (case.name, name, got.shape)
    if datatype == "BYTES":  # tritonclient gives JSON strings as str, binary ones as bytes
        got = np.vectorize(lambda v: v if isinstance(v, bytes) else str(v).encode("utf-8"), otypes=[object])(got)
    if datatype in ("FP32", "FP64"):
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=0, err_msg=f"{case.name}.{name}")
    else:
        np.testing.assert_array_equal(got, want, err_msg=f"{case.name}.{name}")


def _io(tensors: list[dict[str, Any]]) -> list[tuple[str, str, list[int], bool]]:
    return [(t["name"], t["data_type"], [int(d) for d in t["dims"]], t.get("reshape") == {"shape": []})
            for t in tensors]


@pytest.mark.parametrize("name", ["iris", "iris_proba", "iris_nested", "affine", "greeter", "mixer"])
def test_autocompleted_config(server: ServerProcess, cases: list[Case], name: str) -> None:
    case = _case(cases, name)
    response = httpx.get(f"{server.base_url}/v2/models/{name}/config", timeout=30)
    assert response.status_code == 200, response.text
    config = response.json()
    assert config["name"] == name
    assert config["backend"] == "mlflow"
    assert config["platform"] == ""
    assert config["max_batch_size"] == 1024
    assert "dynamic_batching" in config
    # (name, data_type, dims, reshaped to a per-row scalar)
    assert _io(config["input"]) == case.config["input"]
    assert _io(config["output"]) == case.config["output"]
    assert all(not t.get("optional", False) for t in config["input"])  # every column is required
    assert config["instance_group"][0]["kind"] == "KIND_CPU"
    assert config["instance_group"][0]["count"] == 1


@pytest.mark.parametrize("name", ["iris", "greeter"])
def test_metadata_names_the_columns(server: ServerProcess, cases: list[Case], name: str) -> None:
    metadata = httpx.get(f"{server.base_url}/v2/models/{name}", timeout=30).json()
    case = _case(cases, name)
    assert [(t["name"], t["datatype"], t["shape"]) for t in metadata["inputs"]] == [
        (n, dt, [-1, 1]) for n, (_, dt) in case.inputs.items()]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("name", NAMES)
def test_http_matches_mlflow(server: ServerProcess, cases: list[Case], name: str, binary: bool) -> None:
    case = _case(cases, name)
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        inputs = [make_input(httpclient, n, a, dt, binary) for n, (a, dt) in case.inputs.items()]
        outputs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in case.expected]
        result = client.infer(name, inputs, outputs=outputs)
        for output in case.expected:
            _check(case, output, result.as_numpy(output), result.get_output(output)["datatype"])
    finally:
        client.close()


@pytest.mark.parametrize("name", NAMES)
def test_grpc_matches_mlflow(server: ServerProcess, cases: list[Case], name: str) -> None:
    case = _case(cases, name)
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        result = client.infer(name, [make_input(grpcclient, n, a, dt) for n, (a, dt) in case.inputs.items()])
        for output in case.expected:
            _check(case, output, result.as_numpy(output), result.get_output(output).datatype)
    finally:
        client.close()


def _json_value(array: np.ndarray) -> Any:
    if array.dtype == object:
        return [[v.decode("utf-8") for v in row] for row in array]
    return array.tolist()


@pytest.mark.parametrize("name", NAMES)
def test_v1_rest_matches_mlflow(server: ServerProcess, cases: list[Case], name: str) -> None:
    """Row form: one instance per row; named inputs for column models ({"column": [value]} per row)."""
    case = _case(cases, name)
    if len(case.inputs) == 1:
        instances: list[Any] = _json_value(next(iter(case.inputs.values()))[0])
    else:
        columns = {n: _json_value(a) for n, (a, _) in case.inputs.items()}
        instances = [{n: v[i] for n, v in columns.items()} for i in range(len(next(iter(columns.values()))))]
    response = httpx.post(f"{server.base_url}/v1/models/{name}:predict", json={"instances": instances}, timeout=30)
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    for output, want in case.expected.items():
        rows = predictions if len(case.expected) == 1 else [p[output] for p in predictions]
        datatype = case.datatypes[output]
        if datatype == "BYTES":
            got = _strings([r[0] for r in rows])
        else:
            got = np.asarray(rows).astype(want.dtype).reshape(want.shape)
        _check(case, output, got, datatype)


def test_rows_sent_one_by_one_are_batched_alike(server: ServerProcess, cases: list[Case]) -> None:
    """Rows sent one request each (dynamically batched by the server) answer as the whole frame did."""
    from concurrent.futures import ThreadPoolExecutor

    case = _case(cases, "iris_proba")

    def one(i: int) -> np.ndarray:
        client = httpclient.InferenceServerClient(server.http_url)
        try:
            inputs = [make_input(httpclient, n, a[i:i + 1], dt, True) for n, (a, dt) in case.inputs.items()]
            return client.infer(case.name, inputs).as_numpy("output__0")
        finally:
            client.close()

    with ThreadPoolExecutor(8) as pool:
        got = np.concatenate(list(pool.map(one, range(len(case.expected["output__0"])))))
    np.testing.assert_allclose(got, case.expected["output__0"], rtol=RTOL, atol=0)


def test_a_missing_column_is_a_clear_error(server: ServerProcess, cases: list[Case]) -> None:
    case = _case(cases, "iris")
    body = {"inputs": [{"name": n, "shape": [2, 1], "datatype": dt, "data": a[:2].ravel().tolist()}
                       for n, (a, dt) in list(case.inputs.items())[:3]]}
    response = httpx.post(f"{server.base_url}/v2/models/iris/infer", json=body, timeout=30)
    assert response.status_code == 400, response.text
    assert "petal width (cm)" in response.json()["error"]


def test_a_model_without_signature_or_config_is_unavailable(server: ServerProcess) -> None:
    assert httpx.get(f"{server.base_url}/v2/models/nosig/ready", timeout=30).status_code != 200
    reason = unavailable_reason(server.base_url, "nosig")
    assert "no signature" in reason and "config.pbtxt" in reason, reason


def test_a_link_out_of_the_version_folder_is_refused(server: ServerProcess) -> None:
    assert httpx.get(f"{server.base_url}/v2/models/linked/ready", timeout=30).status_code != 200
    reason = unavailable_reason(server.base_url, "linked")
    assert "refusing to load" in reason and "outside the version folder" in reason, reason
