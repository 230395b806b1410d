"""scikit-learn estimators (skl2onnx), XGBoost and LightGBM boosters (onnxmltools) to ONNX.

The input is `input__0` (FP32 [n_features] per row), as inferd's classic ML backends and Triton's FIL name it.
The outputs are the converters' own: a classifier gives `label` and `probabilities` (no ZipMap: a tensor of
[rows, n_classes]), a regressor `variable`. The original is run on the same float32 rows to compare.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..arrays import InputSpec
from ..errors import ToolError, need

INPUT = "input__0"
TREE_OPSET = 15  # the highest onnxmltools' tree converters write


def _spec(features: int) -> list[InputSpec]:
    return [InputSpec(INPUT, np.dtype(np.float32), (None, features))]


def _free_batch(model: Any) -> Any:
    """Give every output a free first dimension (LightGBM's converter declares `label` as [1])."""
    for output in model.graph.output:
        dims = output.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value"):
            dims[0].dim_param = "N"
    return model


def _classifier(probabilities: np.ndarray) -> dict[str, np.ndarray]:
    """label and probabilities from a booster's probabilities ([rows] for binary: of the positive class)."""
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim == 1:
        p = np.stack([1.0 - p, p], axis=1)
    return {"label": p.argmax(axis=1), "probabilities": p}


class SklearnOriginal:
    framework = "scikit-learn"
    default_opset = 17

    def __init__(self, path: Path) -> None:
        joblib = need("joblib", "joblib", "sklearn")
        try:
            self.model = joblib.load(path)  # a pickle runs code: convert only files you trust, as serving them
        except Exception as exc:  # pickle raises anything a broken or foreign file makes it raise
            raise ToolError(f"{path}: cannot unpickle it ({exc})") from None
        if not hasattr(self.model, "predict") or not hasattr(self.model, "n_features_in_"):
            raise ToolError(f"{path}: holds a {type(self.model).__name__}, not a fitted scikit-learn estimator")

    def input_specs(self) -> list[InputSpec] | None:
        return _spec(int(self.model.n_features_in_))

    def example(self) -> dict[str, np.ndarray] | None:
        return None

    def predict(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = inputs[INPUT]
        if hasattr(self.model, "predict_proba"):
            return {"label": self.model.predict(x), "probabilities": self.model.predict_proba(x)}
        return {"variable": self.model.predict(x)}

    def to_onnx(self, inputs: Mapping[str, np.ndarray], opset: int, batched: bool) -> Any:
        need("skl2onnx", "skl2onnx")
        from skl2onnx import convert_sklearn
        from skl2onnx.common.data_types import FloatTensorType

        features = int(self.model.n_features_in_)
        options = {"zipmap": False} if hasattr(self.model, "predict_proba") else None
        try:
            return convert_sklearn(self.model, initial_types=[(INPUT, FloatTensorType([None, features]))],
                                   target_opset=opset, options=options)
        except (RuntimeError, NameError, TypeError, ValueError) as exc:  # skl2onnx's "unsupported model" errors
            raise ToolError(f"skl2onnx cannot convert a {type(self.model).__name__}: {exc}") from None


class XGBoostOriginal:
    framework = "XGBoost"
    default_opset = TREE_OPSET

    def __init__(self, path: Path) -> None:
        xgb = need("xgboost", "xgboost", "xgboost")
        try:
            self.booster = xgb.Booster(model_file=str(path))
        except Exception as exc:  # xgboost.core.XGBoostError
            raise ToolError(f"{path}: not an XGBoost model ({exc})") from None
        self.objective = json.loads(self.booster.save_config())["learner"]["objective"]["name"]

    def input_specs(self) -> list[InputSpec] | None:
        return _spec(int(self.booster.num_features()))

    def example(self) -> dict[str, np.ndarray] | None:
        return None

    def predict(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        import xgboost as xgb

        values = self.booster.predict(xgb.DMatrix(inputs[INPUT]))
        if self.objective in ("binary:logistic", "multi:softprob"):
            return _classifier(values)
        if self.objective == "multi:softmax":
            return {"label": values}
        return {"variable": values}

    def to_onnx(self, inputs: Mapping[str, np.ndarray], opset: int, batched: bool) -> Any:
        need("onnxmltools", "onnxmltools")
        from onnxmltools import convert_xgboost
        from onnxmltools.convert.common.data_types import FloatTensorType

        features = int(self.booster.num_features())
        try:
            model = convert_xgboost(self.booster, initial_types=[(INPUT, FloatTensorType([None, features]))],
                                    target_opset=min(opset, TREE_OPSET))
        except (RuntimeError, ValueError, NotImplementedError) as exc:
            raise ToolError(f"onnxmltools cannot convert this XGBoost model ({self.objective}): {exc}") from None
        return _free_batch(model)


class LightGBMOriginal:
    framework = "LightGBM"
    default_opset = TREE_OPSET

    def __init__(self, path: Path) -> None:
        lgb = need("lightgbm", "lightgbm", "lightgbm")
        try:
            self.booster = lgb.Booster(model_file=str(path))
        except Exception as exc:  # lightgbm.basic.LightGBMError
            raise ToolError(f"{path}: not a LightGBM model ({exc})") from None
        self.objective = str(self.booster.dump_model(num_iteration=0).get("objective", "")).split()[0:1]

    def input_specs(self) -> list[InputSpec] | None:
        return _spec(int(self.booster.num_feature()))

    def example(self) -> dict[str, np.ndarray] | None:
        return None

    def predict(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = self.booster.predict(inputs[INPUT])
        if self.objective and self.objective[0] in ("binary", "multiclass", "multiclassova"):
            return _classifier(values)
        return {"variable": values}

    def to_onnx(self, inputs: Mapping[str, np.ndarray], opset: int, batched: bool) -> Any:
        need("onnxmltools", "onnxmltools")
        from onnxmltools import convert_lightgbm
        from onnxmltools.convert.common.data_types import FloatTensorType

        features = int(self.booster.num_feature())
        try:
            model = convert_lightgbm(self.booster, initial_types=[(INPUT, FloatTensorType([None, features]))],
                                     target_opset=min(opset, TREE_OPSET), zipmap=False)
        except (RuntimeError, ValueError, NotImplementedError) as exc:
            raise ToolError(f"onnxmltools cannot convert this LightGBM model: {exc}") from None
        return _free_batch(model)
