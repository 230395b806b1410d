"""Classic ML backends (scikit-learn, XGBoost, LightGBM): small real models trained here on scikit-learn's bundled
iris / digits data, served by a real `inferd serve`, answering over V2 HTTP, V2 gRPC and V1 REST exactly what the
framework answers in-process (labels equal; FP32 probabilities and values within 1e-6 of the framework's own float
results cast to float32; scikit-learn takes and gives FP64, its estimators' own type, and answers exactly what the
estimator does). Auto-completed configs are checked field by field."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from clients import make_input, unavailable_reason
from serving import ServerProcess, start_server

joblib = pytest.importorskip("joblib")
pytest.importorskip("sklearn")
xgb = pytest.importorskip("xgboost")
lgb = pytest.importorskip("lightgbm")

from sklearn.datasets import load_digits, load_iris  # noqa: E402
from sklearn.ensemble import RandomForestClassifier  # noqa: E402
from sklearn.linear_model import Ridge  # noqa: E402

TOLERANCE = 1e-6  # served FP32 vs the framework's output cast to float32: the same bits, up to a cast


@dataclass
class Case:
    name: str
    x: np.ndarray  # rows, float32 (float64 for scikit-learn)
    expected: np.ndarray  # what the framework computes in-process, shape [rows, k]
    datatype: str  # output__0's V2 datatype
    n_features: int
    config: dict[str, Any]  # auto-completed fields expected in the served config

    @property
    def input_datatype(self) -> str:
        return "FP64" if self.x.dtype == np.float64 else "FP32"


PROBA = 'parameters { key: "method" value { string_value: "predict_proba" } }\n'


def _write(repo: Path, name: str, filename: str, save: Callable[[Path], None], config: str | None = None) -> Path:
    version = repo / name / "1"
    version.mkdir(parents=True)
    save(version / filename)
    if config is not None:
        (repo / name / "config.pbtxt").write_text(config)
    return version


def _column(values: Any) -> np.ndarray:
    array = np.asarray(values)
    return array.reshape(array.shape[0], -1)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Case]]:
    """The model repository and, for each served model, its inputs and the framework's own outputs."""
    repo = tmp_path_factory.mktemp("classic") / "models"
    iris_x, iris_y = load_iris(return_X_y=True)
    digits_x, digits_y = load_digits(return_X_y=True)
    iris = iris_x.astype(np.float32)
    digits = digits_x.astype(np.float32)[:50]
    binary_y = (iris_y == 2).astype(int)
    out: list[Case] = []

    def case(name: str, x: np.ndarray, expected: Any, datatype: str, config_type: str) -> None:
        dims = [_column(expected).shape[1]]
        out.append(Case(name, x, _column(expected), datatype, x.shape[1],
                        {"data_type": config_type, "dims": dims}))

    # scikit-learn: a classifier with no config at all (labels), the same as model.pkl with only `method` set
    # (probabilities), and a regressor on digits.
    forest = RandomForestClassifier(n_estimators=8, max_depth=4, random_state=0).fit(iris_x, iris_y)
    # scikit-learn computes in float64: FP64 in, its own FP64 values out (numpy's and KServe clients' type).
    _write(repo, "sk_iris", "model.joblib", lambda p: joblib.dump(forest, p))
    case("sk_iris", iris_x, forest.predict(iris_x), "INT64", "TYPE_INT64")
    _write(repo, "sk_iris_proba", "model.pkl", lambda p: joblib.dump(forest, p), PROBA)
    case("sk_iris_proba", iris_x, forest.predict_proba(iris_x), "FP64", "TYPE_FP64")
    ridge = Ridge(alpha=1.0).fit(digits_x, digits_y)
    _write(repo, "sk_digits", "model.joblib", lambda p: joblib.dump(ridge, p))
    case("sk_digits", digits_x[:50], ridge.predict(digits_x[:50]), "FP64", "TYPE_FP64")

    # XGBoost: multi-class labels (model.json), probabilities (model.ubj), binary probabilities as two columns.
    booster = xgb.XGBClassifier(n_estimators=10, max_depth=3).fit(iris_x, iris_y)
    _write(repo, "xgb_iris", "model.json", booster.save_model)
    case("xgb_iris", iris, booster.predict(iris), "INT64", "TYPE_INT64")
    _write(repo, "xgb_iris_proba", "model.ubj", booster.save_model, PROBA)
    case("xgb_iris_proba", iris, booster.predict_proba(iris), "FP32", "TYPE_FP32")
    binary = xgb.XGBClassifier(n_estimators=10, max_depth=3).fit(iris_x, binary_y)
    _write(repo, "xgb_binary_proba", "model.json", binary.save_model, PROBA)
    case("xgb_binary_proba", iris, binary.predict_proba(iris), "FP32", "TYPE_FP32")
    regressor = xgb.XGBRegressor(n_estimators=10, max_depth=3).fit(digits_x, digits_y)
    _write(repo, "xgb_digits", "model.json", regressor.save_model)
    case("xgb_digits", digits, regressor.predict(digits), "FP32", "TYPE_FP32")

    # LightGBM: multi-class labels and probabilities, binary labels, a regressor.
    params = {"n_estimators": 10, "num_leaves": 7, "min_child_samples": 5, "verbose": -1}
    light = lgb.LGBMClassifier(**params).fit(iris_x, iris_y)
    _write(repo, "lgb_iris", "model.txt", lambda p: light.booster_.save_model(str(p)))
    case("lgb_iris", iris, light.predict(iris), "INT64", "TYPE_INT64")
    _write(repo, "lgb_iris_proba", "model.txt", lambda p: light.booster_.save_model(str(p)), PROBA)
    case("lgb_iris_proba", iris, light.predict_proba(iris).astype(np.float32), "FP32", "TYPE_FP32")
    light_binary = lgb.LGBMClassifier(**params).fit(iris_x, binary_y)
    _write(repo, "lgb_binary", "model.txt", lambda p: light_binary.booster_.save_model(str(p)))
    case("lgb_binary", iris, light_binary.predict(iris), "INT64", "TYPE_INT64")
    light_reg = lgb.LGBMRegressor(**params).fit(digits_x, digits_y)
    _write(repo, "lgb_digits", "model.txt", lambda p: light_reg.booster_.save_model(str(p)))
    case("lgb_digits", digits, light_reg.predict(digits).astype(np.float32), "FP32", "TYPE_FP32")

    # A pickle reached through a symlink out of its version folder is refused, never loaded.
    outside = tmp_path_factory.mktemp("outside") / "elsewhere.joblib"
    joblib.dump(forest, outside)
    _write(repo, "sk_symlink", "model.joblib", lambda p: os.symlink(outside, p))
    # predict_proba of a regressor is refused at load with the reason.
    _write(repo, "lgb_bad_method", "model.txt", lambda p: light_reg.booster_.save_model(str(p)), PROBA)
    return repo, out


@pytest.fixture(scope="module")
def cases(built: tuple[Path, list[Case]]) -> list[Case]:
    return built[1]


@pytest.fixture(scope="module")
def server(built: tuple[Path, list[Case]], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = start_server(built[0], tmp_path_factory.mktemp("logs") / "inferd-classic.log", "--strict-readiness=false")
    yield process
    process.stop()


NAMES = ["sk_iris", "sk_iris_proba", "sk_digits", "xgb_iris", "xgb_iris_proba", "xgb_binary_proba", "xgb_digits",
         "lgb_iris", "lgb_iris_proba", "lgb_binary", "lgb_digits"]


def _case(cases: list[Case], name: str) -> Case:
    return next(c for c in cases if c.name == name)


def _check(case: Case, got: np.ndarray, datatype: str) -> None:
    assert datatype == case.datatype, case.name
    assert got.shape == case.expected.shape, (case.name, got.shape)
    if case.datatype == "INT64":
        np.testing.assert_array_equal(got, case.expected.astype(np.int64), err_msg=case.name)
    elif case.datatype == "FP64":
        np.testing.assert_array_equal(got, case.expected, err_msg=case.name)
    else:
        np.testing.assert_allclose(got, case.expected.astype(np.float32), rtol=TOLERANCE, atol=TOLERANCE,
                                   err_msg=case.name)


@pytest.mark.parametrize("name", NAMES)
def test_autocompleted_config(server: ServerProcess, cases: list[Case], name: str) -> None:
    case = _case(cases, name)
    config = httpx.get(f"{server.base_url}/v2/models/{name}/config", timeout=30).json()
    assert config["name"] == name
    assert config["backend"] == name.split("_")[0].replace("sk", "sklearn").replace("xgb", "xgboost").replace(
        "lgb", "lightgbm")
    assert config["max_batch_size"] == 8192
    assert "dynamic_batching" in config
    assert [(t["name"], t["data_type"], [int(d) for d in t["dims"]]) for t in config["input"]] == [
        ("input__0", f"TYPE_{case.input_datatype}", [case.n_features])]
    assert [(t["name"], t["data_type"], [int(d) for d in t["dims"]]) for t in config["output"]] == [
        ("output__0", case.config["data_type"], case.config["dims"])]
    assert config["instance_group"][0]["kind"] == "KIND_CPU"


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("name", NAMES)
def test_http_matches_framework(server: ServerProcess, cases: list[Case], name: str, binary: bool) -> None:
    case = _case(cases, name)
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        result = client.infer(name, [make_input(httpclient, "input__0", case.x, case.input_datatype, binary)],
                              outputs=[httpclient.InferRequestedOutput("output__0", binary_data=binary)])
        _check(case, result.as_numpy("output__0"), result.get_output("output__0")["datatype"])
    finally:
        client.close()


@pytest.mark.parametrize("name", NAMES)
def test_grpc_matches_framework(server: ServerProcess, cases: list[Case], name: str) -> None:
    case = _case(cases, name)
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        result = client.infer(name, [make_input(grpcclient, "input__0", case.x, case.input_datatype)])
        _check(case, result.as_numpy("output__0"), result.get_output("output__0").datatype)
    finally:
        client.close()


@pytest.mark.parametrize("name", NAMES)
def test_v1_rest_matches_framework(server: ServerProcess, cases: list[Case], name: str) -> None:
    case = _case(cases, name)
    response = httpx.post(f"{server.base_url}/v1/models/{name}:predict",
                          json={"instances": case.x.tolist()}, timeout=30)
    assert response.status_code == 200, response.text
    got = np.asarray(response.json()["predictions"]).reshape(case.expected.shape)
    types = {"INT64": np.int64, "FP64": np.float64}
    _check(case, got.astype(types.get(case.datatype, np.float32)), case.datatype)


def test_one_row_and_concurrent_rows_are_batched_alike(server: ServerProcess, cases: list[Case]) -> None:
    """Rows sent one request each (dynamically batched by the server) answer as the whole matrix did."""
    from concurrent.futures import ThreadPoolExecutor

    case = _case(cases, "xgb_iris_proba")

    def one(i: int) -> np.ndarray:
        client = httpclient.InferenceServerClient(server.http_url)
        try:
            row = case.x[i:i + 1]
            return client.infer(case.name, [make_input(httpclient, "input__0", row, "FP32", True)]).as_numpy(
                "output__0")
        finally:
            client.close()

    with ThreadPoolExecutor(8) as pool:
        got = np.concatenate(list(pool.map(one, range(len(case.x)))))
    np.testing.assert_allclose(got, case.expected.astype(np.float32), rtol=TOLERANCE, atol=TOLERANCE)


def test_pickle_outside_the_version_folder_is_refused(server: ServerProcess) -> None:
    assert httpx.get(f"{server.base_url}/v2/models/sk_symlink/ready", timeout=30).status_code != 200
    reason = unavailable_reason(server.base_url, "sk_symlink")
    assert "refusing to unpickle" in reason and "outside the version folder" in reason, reason


def test_predict_proba_of_a_regressor_is_refused(server: ServerProcess) -> None:
    assert "predict_proba" in unavailable_reason(server.base_url, "lgb_bad_method")
