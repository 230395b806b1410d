"""What a KServe / MLServer scikit-learn user brings: a bare `model.joblib`, numpy's float64 rows, and KServe's
answer shapes.

Models are trained here on scikit-learn's bundled iris / diabetes data and served with no config.pbtxt. A client
that posts float64 rows (V1 `instances`, V2 JSON with datatype FP64, tritonclient with a numpy float64 array) gets
exactly what the estimator's own `predict` returns; V1 answers a flat prediction list for one-value-per-row outputs,
as KServe's sklearn, xgboost and lightgbm servers do. A config written in FIL's style (FP32 declared) keeps FP32.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient

from serving import ServerProcess, start_server

joblib = pytest.importorskip("joblib")
pytest.importorskip("sklearn")
xgb = pytest.importorskip("xgboost")
lgb = pytest.importorskip("lightgbm")

from sklearn.datasets import load_diabetes, load_iris  # noqa: E402
from sklearn.linear_model import LinearRegression, LogisticRegression  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

PROBA = 'parameters { key: "method" value { string_value: "predict_proba" } }\n'
FIL_STYLE = """backend: "sklearn"
max_batch_size: 64
input [{ name: "input__0" data_type: TYPE_FP32 dims: [ 4 ] }]
output [{ name: "output__0" data_type: TYPE_INT64 dims: [ 1 ] }]
"""
# KServe's own sklearn example request (docs: "Deploy Scikit-learn models with InferenceService").
IRIS_ROWS = [[6.8, 2.8, 4.8, 1.4], [6.0, 3.4, 4.5, 1.6], [5.1, 3.5, 1.4, 0.2]]


def _save(repo: Path, name: str, filename: str, save: Any, config: str = "") -> None:
    (repo / name / "1").mkdir(parents=True)
    save(repo / name / "1" / filename)
    if config:
        (repo / name / "config.pbtxt").write_text(config)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    repo = tmp_path_factory.mktemp("kserve") / "models"
    iris_x, iris_y = load_iris(return_X_y=True)
    diabetes_x, diabetes_y = load_diabetes(return_X_y=True)
    iris = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(iris_x, iris_y)
    regressor = LinearRegression().fit(diabetes_x, diabetes_y)
    booster = xgb.XGBClassifier(n_estimators=8, max_depth=3).fit(iris_x, iris_y)
    light = lgb.LGBMClassifier(n_estimators=8, num_leaves=7, min_child_samples=5, verbose=-1).fit(iris_x, iris_y)
    _save(repo, "iris", "model.joblib", lambda p: joblib.dump(iris, p))
    _save(repo, "iris_proba", "model.joblib", lambda p: joblib.dump(iris, p), PROBA)
    _save(repo, "diabetes", "model.pkl", lambda p: joblib.dump(regressor, p))
    _save(repo, "iris_fil_style", "model.joblib", lambda p: joblib.dump(iris, p), FIL_STYLE)
    _save(repo, "iris_xgb", "model.json", booster.save_model)
    _save(repo, "iris_lgb", "model.txt", lambda p: light.booster_.save_model(str(p)))
    return {"repo": repo, "iris": iris, "diabetes": regressor, "diabetes_x": diabetes_x[:5], "xgb": booster,
            "lgb": light}


@pytest.fixture(scope="module")
def server(models: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = start_server(models["repo"], tmp_path_factory.mktemp("logs") / "inferd-kserve.log")
    yield process
    process.stop()


def _v1(server: ServerProcess, name: str, instances: Any) -> httpx.Response:
    return httpx.post(f"{server.base_url}/v1/models/{name}:predict", json={"instances": instances}, timeout=30)


def test_v1_classifier_answers_a_flat_list_of_labels(server: ServerProcess, models: dict[str, Any]) -> None:
    response = _v1(server, "iris", IRIS_ROWS)
    assert response.status_code == 200, response.text
    assert response.json() == {"predictions": models["iris"].predict(np.array(IRIS_ROWS)).tolist()}


def test_v1_regressor_answers_the_estimators_own_float64_values(server: ServerProcess,
                                                                models: dict[str, Any]) -> None:
    rows = models["diabetes_x"]
    response = _v1(server, "diabetes", rows.tolist())
    assert response.status_code == 200, response.text
    assert response.json()["predictions"] == models["diabetes"].predict(rows).tolist()  # exactly, no FP32 rounding


def test_v1_probabilities_are_one_list_per_instance(server: ServerProcess, models: dict[str, Any]) -> None:
    response = _v1(server, "iris_proba", IRIS_ROWS)
    assert response.status_code == 200, response.text
    assert response.json()["predictions"] == models["iris"].predict_proba(np.array(IRIS_ROWS)).tolist()


@pytest.mark.parametrize("name", ["iris_xgb", "iris_lgb"])
def test_v1_boosters_answer_a_flat_list_of_labels(server: ServerProcess, models: dict[str, Any], name: str) -> None:
    response = _v1(server, name, IRIS_ROWS)
    assert response.status_code == 200, response.text
    estimator = models["xgb" if name == "iris_xgb" else "lgb"]
    assert response.json() == {"predictions": estimator.predict(np.array(IRIS_ROWS)).tolist()}


def test_v2_json_with_fp64_rows(server: ServerProcess, models: dict[str, Any]) -> None:
    """A hand-written V2 request, as KServe's V2 examples write it, with numpy's default type."""
    body = {"inputs": [{"name": "input__0", "shape": [3, 4], "datatype": "FP64",
                        "data": [v for row in IRIS_ROWS for v in row]}]}
    response = httpx.post(f"{server.base_url}/v2/models/iris/infer", json=body, timeout=30)
    assert response.status_code == 200, response.text
    (output,) = response.json()["outputs"]
    assert (output["name"], output["datatype"], output["shape"]) == ("output__0", "INT64", [3, 1])
    assert output["data"] == models["iris"].predict(np.array(IRIS_ROWS)).tolist()


def test_tritonclient_with_a_numpy_float64_array(server: ServerProcess, models: dict[str, Any]) -> None:
    rows = models["diabetes_x"]
    assert rows.dtype == np.float64
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        tensor = httpclient.InferInput("input__0", list(rows.shape), "FP64")
        tensor.set_data_from_numpy(rows)
        result = client.infer("diabetes", [tensor])
        config = client.get_model_config("diabetes")
    finally:
        client.close()
    np.testing.assert_array_equal(result.as_numpy("output__0").reshape(-1), models["diabetes"].predict(rows))
    assert [(t["name"], t["data_type"]) for t in config["input"]] == [("input__0", "TYPE_FP64")]
    assert [(t["name"], t["data_type"]) for t in config["output"]] == [("output__0", "TYPE_FP64")]


def test_fil_style_config_keeps_fp32(server: ServerProcess, models: dict[str, Any]) -> None:
    base = f"{server.base_url}/v2/models/iris_fil_style/infer"
    rows = [v for row in IRIS_ROWS for v in row]
    fp32 = httpx.post(base, json={"inputs": [{"name": "input__0", "shape": [3, 4], "datatype": "FP32",
                                              "data": rows}]}, timeout=30)
    assert fp32.status_code == 200, fp32.text
    expected = models["iris"].predict(np.array(IRIS_ROWS, dtype=np.float32)).tolist()
    assert fp32.json()["outputs"][0]["data"] == expected
    fp64 = httpx.post(base, json={"inputs": [{"name": "input__0", "shape": [3, 4], "datatype": "FP64",
                                              "data": rows}]}, timeout=30)
    assert fp64.status_code == 400
    assert "data-type is 'FP64'" in fp64.json()["error"] and "expects 'FP32'" in fp64.json()["error"]
    # V1 decodes JSON numbers into the declared FP32 and answers the flat list all the same.
    assert _v1(server, "iris_fil_style", IRIS_ROWS).json() == {"predictions": expected}
