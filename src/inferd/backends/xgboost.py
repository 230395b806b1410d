"""XGBoost backend (`backend: "xgboost"`): a booster saved with `save_model` as `model.json` or `model.ubj`.

These formats are data (no pickle): a model file cannot run code. Input `input__0` FP32 [num_features]; output
`output__0`: for `method: predict` a classifier's class index (INT64: `binary:*` objectives 1 where the margin is
> 0, i.e. P > 0.5, `multi:*` the arg max, as `XGBClassifier.predict`) or a regressor's / ranker's value (FP32 [1]);
for `method: predict_proba` a classifier's probabilities (FP32 [n_classes], binary as [1 - p, p], as
`XGBClassifier.predict_proba`). A model saved after early stopping predicts with its best iteration, as the
scikit-learn wrapper does. `instance_group { kind: KIND_GPU }` predicts on that GPU (XGBoost's `device`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import xgboost as xgb

from ..config import ConfigError, ModelConfig
from ..types import InferError
from ._tabular import TabularModel, autocomplete_io, find_file, method, two_columns

FILENAMES = ("model.json", "model.ubj", "xgboost.json", "xgboost.ubj", "xgboost.model")
_CLASSIFIERS = ("binary:logistic", "binary:logitraw", "binary:hinge", "multi:softprob", "multi:softmax")


def load_booster(config: ModelConfig, files: Path) -> xgb.Booster:
    path = find_file(config, files, FILENAMES)
    try:
        return xgb.Booster(model_file=str(path))
    except xgb.core.XGBoostError as exc:
        raise ConfigError(f"xgboost failed to load {path.name}: {' '.join(str(exc).split())[:500]}") from None


class _Model:
    """What one booster predicts, by objective."""

    def __init__(self, booster: xgb.Booster) -> None:
        learner = json.loads(booster.save_config())["learner"]
        self.objective = str(learner["objective"]["name"])
        self.n_classes = max(int(learner["learner_model_param"].get("num_class", "0")), 0)
        self.n_targets = max(int(learner["learner_model_param"].get("num_target", "1")), 1)
        self.classifier = self.objective in _CLASSIFIERS
        if self.classifier and self.n_classes < 2:
            self.n_classes = 2
        best = booster.attr("best_iteration")
        self.iterations = (0, int(best) + 1) if best is not None else (0, 0)
        self.booster = booster

    def output(self, method_name: str) -> tuple[str, list[int]]:
        if method_name == "predict_proba":
            if not self.classifier or self.objective == "binary:hinge":
                raise ConfigError(f"method 'predict_proba' needs a probabilistic classifier; this model's objective "
                                  f"is '{self.objective}'")
            return "TYPE_FP32", [self.n_classes]
        return ("TYPE_INT64", [1]) if self.classifier else ("TYPE_FP32", [self.n_targets])

    def predictor(self, method_name: str) -> Any:
        self.output(method_name)  # refuses what the model cannot do
        booster, iterations = self.booster, self.iterations

        def value(x: np.ndarray) -> np.ndarray:
            return np.asarray(booster.inplace_predict(x, iteration_range=iterations))

        def margin(x: np.ndarray) -> np.ndarray:
            return np.asarray(booster.inplace_predict(x, iteration_range=iterations, predict_type="margin"))

        def proba(x: np.ndarray) -> np.ndarray:
            if self.objective in ("binary:logistic", "multi:softprob"):  # XGBoost's own probabilities
                p = value(x)
                return two_columns(p) if self.objective == "binary:logistic" else p.reshape(x.shape[0], -1)
            m = margin(x).astype(np.float64)
            if self.objective == "binary:logitraw":
                return two_columns(1.0 / (1.0 + np.exp(-m)))
            m = m.reshape(x.shape[0], -1)
            e = np.exp(m - m.max(axis=1, keepdims=True))
            return e / e.sum(axis=1, keepdims=True)

        def labels(x: np.ndarray) -> np.ndarray:
            if self.objective == "binary:logistic":
                return (value(x).reshape(-1) > 0.5).astype(np.int64)
            if self.objective.startswith("binary:"):
                return (margin(x).reshape(-1) > 0).astype(np.int64)
            scores = value(x) if self.objective == "multi:softprob" else margin(x)
            return np.argmax(scores.reshape(x.shape[0], -1), axis=1)

        if not self.classifier:
            return value
        return labels if method_name == "predict" else proba


class XGBoostBackend:
    """One booster. XGBoost's C++ predict runs without the GIL, so instances run on threads."""

    releases_gil = True

    def __init__(self) -> None:
        self._probe: xgb.Booster | None = None
        self._model: TabularModel | None = None

    def autocomplete(self, config: ModelConfig, files: Path) -> ModelConfig:
        booster = self._probe = load_booster(config, files)
        output_type, dims = _Model(booster).output(method(config))
        return autocomplete_io(config, booster.num_features(), output_type, dims)

    def load(self, config: ModelConfig, files: Path, device: str) -> None:
        booster, self._probe = (self._probe if self._probe is not None else load_booster(config, files)), None
        if device != "cpu":
            booster.set_param({"device": device})
        model = _Model(booster)
        self._model = TabularModel(config, booster.num_features(), model.predictor(method(config)))

    def execute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._model is None:
            raise InferError.unavailable("model instance is not loaded")
        return self._model.execute(inputs)

    def unload(self) -> None:
        self._probe = self._model = None
