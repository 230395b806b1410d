"""Triton's FIL backend configs (`backend: "fil"`), served by inferd's XGBoost and LightGBM backends.

A repository written for Triton's Forest Inference Library backend loads unchanged: the parameter `model_type`
picks the format and so the backend that reads it, with FIL's default file name for each:

    xgboost_ubj   xgboost.ubj     XGBoost UBJSON
    xgboost_json  xgboost.json    XGBoost JSON
    xgboost       xgboost.model   XGBoost's legacy binary format (as far as the installed XGBoost still reads it)
    lightgbm      model.txt       LightGBM text

`default_model_filename` overrides the name, and a version folder holding only the inner backend's own names
(`model.json`, `model.ubj`) works too. Without `model_type`, the format follows the file present (FIL itself
assumes `xgboost`). `treelite_checkpoint` is refused with its reason: Treelite is not a dependency of inferd.

`predict_proba: "true"` returns the class probabilities, otherwise a classifier returns its class index. As FIL
does, auto-completed outputs are TYPE_FP32 (FIL computes in 32-bit floats only); a config's own output type is
kept. FIL's GPU tuning parameters (`threads_per_tree`, `storage_type`, `algo`, ...) are accepted and ignored.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..config import ConfigError, DataType, ModelConfig, string_parameter
from ..types import InferError
from .base import Backend

# model_type -> (inferd backend, FIL's default file name)
MODEL_TYPES: dict[str, tuple[str, str]] = {
    "xgboost_ubj": ("xgboost", "xgboost.ubj"),
    "xgboost_json": ("xgboost", "xgboost.json"),
    "xgboost": ("xgboost", "xgboost.model"),
    "lightgbm": ("lightgbm", "model.txt"),
}
# What a version folder holds -> model_type, for configs that do not say.
_BY_FILE = (("xgboost.ubj", "xgboost_ubj"), ("model.ubj", "xgboost_ubj"), ("xgboost.json", "xgboost_json"),
            ("model.json", "xgboost_json"), ("model.txt", "lightgbm"), ("xgboost.model", "xgboost"))


def _model_type(config: ModelConfig, files: Path) -> str:
    model_type = string_parameter(config, "model_type").strip()
    if model_type == "treelite_checkpoint":
        raise ConfigError("FIL model_type 'treelite_checkpoint' is not supported: save the model in XGBoost "
                          "(xgboost_json / xgboost_ubj) or LightGBM (lightgbm) format")
    if model_type:
        if model_type not in MODEL_TYPES:
            raise ConfigError(f"FIL parameter 'model_type' must be one of {', '.join(MODEL_TYPES)}, got "
                              f"'{model_type}'")
        return model_type
    if config.default_model_filename:
        name = config.default_model_filename
        if name.endswith(".txt"):
            return "lightgbm"
        return "xgboost_ubj" if name.endswith(".ubj") else "xgboost_json" if name.endswith(".json") else "xgboost"
    for filename, found in _BY_FILE:
        if (files / filename).is_file():
            return found
    return "xgboost"


def _inner_config(config: ModelConfig, files: Path, model_type: str) -> ModelConfig:
    """The config as the inner backend reads it: FIL's default file name made explicit where that file exists."""
    inner = ModelConfig()
    inner.CopyFrom(config)
    default = MODEL_TYPES[model_type][1]
    if not inner.default_model_filename and (files / default).is_file():
        inner.default_model_filename = default
    return inner


class FilBackend:
    """Chooses the XGBoost or LightGBM backend by `model_type` and delegates every call to it."""

    releases_gil = True

    def __init__(self) -> None:
        self._inner: Backend | None = None

    def _create(self, model_type: str) -> Backend:
        from . import create_backend  # the registry imports this module only when a FIL model loads

        return create_backend(MODEL_TYPES[model_type][0])

    def autocomplete(self, config: ModelConfig, files: Path) -> ModelConfig:
        model_type = _model_type(config, files)
        completing_outputs = not config.output
        inner = self._inner = self._create(model_type)
        completed = inner.autocomplete(_inner_config(config, files, model_type), files)
        completed.default_model_filename = config.default_model_filename  # keep the user's choice, not ours
        if completing_outputs:
            for tensor in completed.output:
                if tensor.data_type != DataType.Value("TYPE_STRING"):
                    tensor.data_type = DataType.Value("TYPE_FP32")
        config.CopyFrom(completed)
        return config

    def load(self, config: ModelConfig, files: Path, device: str) -> None:
        model_type = _model_type(config, files)
        inner = self._inner if self._inner is not None else self._create(model_type)
        inner.load(_inner_config(config, files, model_type), files, device)
        self._inner = inner

    def execute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._inner is None:
            raise InferError.unavailable("model instance is not loaded")
        return self._inner.execute(inputs)

    def unload(self) -> None:
        inner, self._inner = self._inner, None
        if inner is not None:
            inner.unload()
