"""Triton FIL backend configs (`backend: "fil"`) load unchanged: XGBoost and LightGBM tree models trained here on
iris, served by a real `inferd serve`, answering what the framework answers in-process (class indices equal,
probabilities within 1e-6 of the framework's float32 results)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from clients import make_input
from serving import ServerProcess, start_server

xgb = pytest.importorskip("xgboost")
lgb = pytest.importorskip("lightgbm")

from sklearn.datasets import load_iris  # noqa: E402

TOLERANCE = 1e-6

# The config of FIL's documentation, for a 4-feature classifier returning its class index.
FIL_CLASS = """
backend: "fil"
max_batch_size: 32768
input [ { name: "input__0" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "output__0" data_type: TYPE_FP32 dims: [ 1 ] } ]
instance_group [{ kind: KIND_AUTO }]
parameters [
  { key: "model_type" value: { string_value: "xgboost_ubj" } },
  { key: "output_class" value: { string_value: "true" } },
  { key: "storage_type" value: { string_value: "AUTO" } }
]
dynamic_batching {}
"""
FIL_PROBA = """
backend: "fil"
max_batch_size: 8192
input [ { name: "input__0" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "output__0" data_type: TYPE_FP32 dims: [ 3 ] } ]
parameters [
  { key: "model_type" value: { string_value: "lightgbm" } },
  { key: "output_class" value: { string_value: "true" } },
  { key: "predict_proba" value: { string_value: "true" } }
]
dynamic_batching {}
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, dict[str, np.ndarray]]]:
    repo = tmp_path_factory.mktemp("fil") / "models"
    x, y = load_iris(return_X_y=True)
    rows = x.astype(np.float32)
    expected: dict[str, np.ndarray] = {}

    def model(name: str, filename: str, config: str) -> Path:
        (repo / name / "1").mkdir(parents=True)
        (repo / name / "config.pbtxt").write_text(config)
        return repo / name / "1" / filename

    booster = xgb.XGBClassifier(n_estimators=10, max_depth=3).fit(x, y)
    booster.save_model(model("fil_xgb_class", "xgboost.ubj", FIL_CLASS))
    expected["fil_xgb_class"] = booster.predict(rows).reshape(-1, 1).astype(np.float32)
    # Only `backend: "fil"`: the format follows the file (xgboost.json), outputs auto-complete as FP32.
    booster.save_model(model("fil_xgb_auto", "xgboost.json", 'backend: "fil"\n'))
    expected["fil_xgb_auto"] = booster.predict(rows).reshape(-1, 1).astype(np.float32)
    light = lgb.LGBMClassifier(n_estimators=10, num_leaves=7, min_child_samples=5, verbose=-1).fit(x, y)
    light.booster_.save_model(str(model("fil_lgb_proba", "model.txt", FIL_PROBA)))
    expected["fil_lgb_proba"] = light.predict_proba(rows).astype(np.float32)
    model("fil_treelite", "checkpoint.tl", 'backend: "fil"\nparameters [ { key: "model_type" value: '
          '{ string_value: "treelite_checkpoint" } } ]\n').write_bytes(b"\0")
    expected["rows"] = rows
    server = start_server(repo, tmp_path_factory.mktemp("logs") / "inferd-fil.log", "--strict-readiness=false")
    yield server, expected
    server.stop()


@pytest.mark.parametrize("name", ["fil_xgb_class", "fil_xgb_auto", "fil_lgb_proba"])
def test_fil_models_answer_as_the_framework(setup: tuple[ServerProcess, dict[str, np.ndarray]], name: str) -> None:
    server, expected = setup
    rows = expected["rows"]
    http = httpclient.InferenceServerClient(server.http_url)
    grpc = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        got_http = http.infer(name, [make_input(httpclient, "input__0", rows, "FP32", True)])
        got_grpc = grpc.infer(name, [make_input(grpcclient, "input__0", rows, "FP32")])
    finally:
        http.close()
        grpc.close()
    assert got_http.get_output("output__0")["datatype"] == "FP32"
    for got in (got_http.as_numpy("output__0"), got_grpc.as_numpy("output__0")):
        np.testing.assert_allclose(got, expected[name], rtol=TOLERANCE, atol=TOLERANCE)


def test_fil_autocomplete_is_fp32_as_fil(setup: tuple[ServerProcess, dict[str, np.ndarray]]) -> None:
    server, _ = setup
    config = httpx.get(f"{server.base_url}/v2/models/fil_xgb_auto/config", timeout=30).json()
    assert config["backend"] == "fil"
    assert [(t["name"], t["data_type"], t["dims"]) for t in config["input"]] == [("input__0", "TYPE_FP32", [4])]
    assert [(t["name"], t["data_type"], t["dims"]) for t in config["output"]] == [("output__0", "TYPE_FP32", [1])]
    assert config["max_batch_size"] == 8192 and "dynamic_batching" in config
    assert config.get("default_model_filename", "") == ""


def test_treelite_checkpoint_is_refused_with_its_reason(setup: tuple[ServerProcess, dict[str, np.ndarray]]) -> None:
    server, _ = setup
    rows = httpx.post(f"{server.base_url}/v2/repository/index", timeout=30).json()
    row = next(r for r in rows if r["name"] == "fil_treelite")
    assert row["state"] == "UNAVAILABLE"
    assert "treelite_checkpoint" in row["reason"] and "not supported" in row["reason"]
