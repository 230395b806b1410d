"""LightGBM backend (`backend: "lightgbm"`): a booster saved with `save_model` as `model.txt`.

The text format is data (no pickle): a model file cannot run code. Input `input__0` FP32 [num_feature()];
output `output__0`: for `method: predict` a classifier's class index (INT64, the arg max of its probabilities, as
`LGBMClassifier.predict`) or a regressor's / ranker's value (FP32 [1]); for `method: predict_proba` a classifier's
probabilities (FP32 [n_classes], binary as [1 - p, p], as `LGBMClassifier.predict_proba`). Runs on the CPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np

from ..config import ConfigError, ModelConfig
from ..types import InferError
from ._tabular import TabularModel, autocomplete_io, find_file, method, two_columns

FILENAMES = ("model.txt",)
_CLASSIFIERS = ("binary", "multiclass", "multiclassova")


def load_booster(config: ModelConfig, files: Path) -> tuple[lgb.Booster, str]:
    """The booster and its objective's name (from the model file's header)."""
    path = find_file(config, files, FILENAMES)
    try:
        booster = lgb.Booster(model_file=str(path))
    except lgb.basic.LightGBMError as exc:
        raise ConfigError(f"lightgbm failed to load {path.name}: {' '.join(str(exc).split())[:500]}") from None
    objective = ""
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith("objective="):
                objective = line.partition("=")[2].split()[0] if line.partition("=")[2].split() else ""
                break
            if line.startswith("Tree="):
                break
    return booster, objective


class _Model:
    def __init__(self, booster: lgb.Booster, objective: str) -> None:
        self.booster, self.objective = booster, objective
        self.classifier = objective in _CLASSIFIERS
        self.n_classes = max(booster.num_model_per_iteration(), 2) if self.classifier else 0

    def output(self, method_name: str) -> tuple[str, list[int]]:
        if method_name == "predict_proba":
            if not self.classifier:
                raise ConfigError(f"method 'predict_proba' needs a classifier; this model's objective is "
                                  f"'{self.objective or 'unknown'}'")
            return "TYPE_FP32", [self.n_classes]
        return ("TYPE_INT64" if self.classifier else "TYPE_FP32"), [1]

    def predictor(self, method_name: str) -> Any:
        self.output(method_name)
        booster = self.booster

        def value(x: np.ndarray) -> np.ndarray:
            return np.asarray(booster.predict(x))

        def proba(x: np.ndarray) -> np.ndarray:
            p = value(x)
            return two_columns(p) if self.objective == "binary" else p.reshape(x.shape[0], -1)

        if not self.classifier:
            return value
        if method_name == "predict_proba":
            return proba
        return lambda x: np.argmax(proba(x), axis=1)


class LightGBMBackend:
    """One booster. LightGBM's C++ predict runs without the GIL, so instances run on threads."""

    releases_gil = True

    def __init__(self) -> None:
        self._probe: tuple[lgb.Booster, str] | None = None
        self._model: TabularModel | None = None

    def autocomplete(self, config: ModelConfig, files: Path) -> ModelConfig:
        booster, objective = self._probe = load_booster(config, files)
        output_type, dims = _Model(booster, objective).output(method(config))
        return autocomplete_io(config, booster.num_feature(), output_type, dims)

    def load(self, config: ModelConfig, files: Path, device: str) -> None:
        if device != "cpu":
            raise ConfigError(f"the lightgbm backend runs on the CPU only (instance_group asks for {device})")
        booster, objective = self._probe if self._probe is not None else load_booster(config, files)
        self._probe = None
        self._model = TabularModel(config, booster.num_feature(), _Model(booster, objective).predictor(method(config)))

    def execute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._model is None:
            raise InferError.unavailable("model instance is not loaded")
        return self._model.execute(inputs)

    def unload(self) -> None:
        self._probe = self._model = None
