"""scikit-learn backend (`backend: "sklearn"`): an estimator or pipeline saved as `model.joblib` or `model.pkl`.

SECURITY: a joblib / pickle file is a program, not data. Loading one runs whatever code it was written to run,
with the server's rights. Serve only pickles you made or trust as you would trust code you install. The backend
refuses a pickle whose real path (symlinks followed) lies outside its version folder, so a link in a repository
cannot make the server unpickle a file from elsewhere on the host.

Input `input__0` FP64 [n_features] (from the estimator's `n_features_in_`; float64 is what scikit-learn computes in
and what numpy and KServe / MLServer clients send), output `output__0`: for `method: predict` a classifier's labels
(INT64 for integer classes, BYTES for string classes) or a regressor's values (FP64, [n_targets]); for
`method: predict_proba`, FP64 [n_classes]. The output's type and width are found by running the chosen method on
one row of zeros at auto-complete. A config that declares its tensors (FIL's style, FP32) keeps its types: the
estimator is given what the config declares.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import joblib
import numpy as np

from ..config import ConfigError, ModelConfig
from ..types import InferError
from ._tabular import TabularModel, autocomplete_io, find_file, method, output_type_of

log = logging.getLogger("inferd.sklearn")

FILENAMES = ("model.joblib", "model.pkl")
INPUT_TYPE = "TYPE_FP64"  # what scikit-learn estimators compute in (check_array's default) and numpy's default


def load_estimator(config: ModelConfig, files: Path) -> Any:
    path = find_file(config, files, FILENAMES)
    real, folder = path.resolve(), files.resolve()
    if not real.is_relative_to(folder):
        raise ConfigError(f"refusing to unpickle {path}: it resolves to {real}, outside the version folder {folder} "
                          "(a pickle runs code when loaded)")
    try:
        return joblib.load(real)
    except Exception as exc:  # unpickling raises anything the pickled code or a version mismatch raises
        raise ConfigError(f"scikit-learn failed to load {path.name}: {type(exc).__name__}: "
                          f"{' '.join(str(exc).split())}") from None


def _n_features(estimator: Any) -> int:
    return int(getattr(estimator, "n_features_in_", -1))


class SklearnBackend:
    """One unpickled estimator. Its predict is numpy and Cython code that largely runs without the GIL."""

    releases_gil = True

    def __init__(self) -> None:
        self._estimator: Any = None
        self._probe: Any = None
        self._model: TabularModel | None = None

    def _method(self, estimator: Any, config: ModelConfig) -> Any:
        name = method(config)
        fn = getattr(estimator, name, None)
        if fn is None:
            raise ConfigError(f"the estimator {type(estimator).__name__} has no method '{name}'")
        return fn

    def autocomplete(self, config: ModelConfig, files: Path) -> ModelConfig:
        estimator = self._probe = load_estimator(config, files)
        fn = self._method(estimator, config)
        n = _n_features(estimator)
        output_type, dims = "TYPE_FP64", [1]
        if n > 0:
            try:
                probe = np.asarray(fn(np.zeros((1, n), dtype=np.float64)))
                output_type = output_type_of(probe)
                dims = [int(np.prod(probe.shape[1:]))] if probe.ndim > 1 else [1]
            except Exception as exc:  # a pipeline may not take zeros; fall back on what the estimator says
                log.warning("could not probe %s on a row of zeros (%s); completing the output from its attributes",
                            type(estimator).__name__, exc)
                classes = getattr(estimator, "classes_", None)
                if classes is not None and method(config) == "predict_proba":
                    dims = [len(classes)]
                elif classes is not None:
                    output_type = output_type_of(np.asarray(classes))
        return autocomplete_io(config, n, output_type, dims, input_type=INPUT_TYPE)

    def load(self, config: ModelConfig, files: Path, device: str) -> None:
        if device != "cpu":
            raise ConfigError(f"scikit-learn runs on the CPU only (instance_group asks for {device})")
        estimator, self._probe = (self._probe if self._probe is not None else load_estimator(config, files)), None
        self._model = TabularModel(config, _n_features(estimator), self._method(estimator, config))
        self._estimator = estimator

    def execute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._model is None:
            raise InferError.unavailable("model instance is not loaded")
        return self._model.execute(inputs)

    def unload(self) -> None:
        self._estimator = self._probe = self._model = None
