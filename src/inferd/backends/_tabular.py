"""What the classic ML backends (scikit-learn, XGBoost, LightGBM) share: one feature matrix in, one tensor out.

Their I/O is named as Triton's FIL backend names it for tree models: `input__0` ([n_features] per row; FP32 as FIL
declares it, FP64 for scikit-learn, whose estimators compute in float64) and `output__0` ([1] for `predict`,
[n_classes] for `predict_proba`). The config parameter `method`
(`parameters { key: "method" value { string_value: "predict_proba" } }`) picks what the output holds; FIL's own
`predict_proba: "true"` is read the same way. A config's own data types are kept (FIL-style FP32 configs).

`predict` gives one value per row: the model's own output is 1-D. Auto-complete says so with Triton's
`reshape { shape: [] }` on a batched `output__0` of dims [1], so V2 still answers [rows, 1] while the front doors
that answer in the model's own shape (V1, as KServe's sklearn / xgboost / lightgbm servers) give a flat list of
predictions, `{"predictions": [0, 2, 1]}`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..config import ConfigError, DataType, ModelConfig, string_parameter
from ..types import CONFIG_TO_V2, V2_TO_NUMPY, InferError

INPUT = "input__0"
OUTPUT = "output__0"
# A tree model predicts thousands of rows in about the time a request takes to arrive: large batches are cheap.
DEFAULT_MAX_BATCH_SIZE = 8192
METHODS = ("predict", "predict_proba")


def method(config: ModelConfig) -> str:
    """`predict` (the default) or `predict_proba`, from the parameter `method` (or FIL's `predict_proba`)."""
    name = string_parameter(config, "method").strip()
    if not name:
        name = "predict_proba" if string_parameter(config, "predict_proba").strip().lower() == "true" else "predict"
    if name not in METHODS:
        raise ConfigError(f"parameter 'method' must be one of {', '.join(METHODS)}, got '{name}'")
    return name


def find_file(config: ModelConfig, files: Path, candidates: tuple[str, ...]) -> Path:
    """The model file in the version folder: `default_model_filename`, else the first candidate present."""
    names = (config.default_model_filename,) if config.default_model_filename else candidates
    for name in names:
        if (files / name).is_file():
            return files / name
    raise ConfigError(f"model file {' or '.join(str(files / n) for n in names)} not found")


def autocomplete_io(config: ModelConfig, n_features: int, output_type: str, output_dims: list[int],
                    input_type: str = "TYPE_FP32") -> ModelConfig:
    """Fill `input__0` / `output__0`, `max_batch_size` and `dynamic_batching` where the config leaves them out, and
    mark a batched one-value-per-row output as the model's 1-D output (`reshape { shape: [] }`)."""
    completing_io = not config.input and not config.output
    if completing_io and config.max_batch_size == 0:
        config.max_batch_size = DEFAULT_MAX_BATCH_SIZE
        if not config.HasField("dynamic_batching") and not config.HasField("sequence_batching"):
            config.dynamic_batching.SetInParent()
    if completing_io:
        config.input.add().name = INPUT
        config.output.add().name = OUTPUT
    for tensor in config.input:
        if tensor.data_type == 0:
            tensor.data_type = DataType.Value(input_type)
        if not tensor.dims and not tensor.HasField("reshape"):
            tensor.dims.append(n_features if n_features > 0 else -1)
    for tensor in config.output:
        if tensor.data_type == 0:
            tensor.data_type = DataType.Value(output_type)
        if not tensor.dims and not tensor.HasField("reshape"):
            tensor.dims.extend(output_dims)
        if config.max_batch_size > 0 and list(tensor.dims) == [1] and not tensor.HasField("reshape"):
            tensor.reshape.SetInParent()  # one value per row: the model's own output is 1-D
    return config


class TabularModel:
    """Checks the config against the model at load and runs `predict(rows) -> array` on each call."""

    def __init__(self, config: ModelConfig, n_features: int, predict: Callable[[np.ndarray], np.ndarray]) -> None:
        if len(config.input) != 1 or len(config.output) != 1:
            raise ConfigError(f"a {config.backend or 'classic ML'} model has exactly one input and one output "
                              f"(as '{INPUT}' and '{OUTPUT}'), the configuration declares {len(config.input)} "
                              f"and {len(config.output)}")
        tensor, output = config.input[0], config.output[0]
        shape = list(tensor.reshape.shape) if tensor.HasField("reshape") else list(tensor.dims)
        if n_features > 0 and shape and shape[-1] not in (-1, n_features):
            raise ConfigError(f"input '{tensor.name}' has {shape[-1]} features in the configuration but the model "
                              f"takes {n_features}")
        if tensor.data_type == DataType.Value("TYPE_STRING"):
            raise ConfigError(f"input '{tensor.name}' must be numeric (TYPE_FP32 as FIL declares it)")
        self.input_name, self.output_name = tensor.name, output.name
        self._predict = predict
        self._string_output = output.data_type == DataType.Value("TYPE_STRING")
        self._dtype = None if self._string_output else V2_TO_NUMPY[CONFIG_TO_V2[DataType.Name(output.data_type)]]

    def execute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = inputs[self.input_name]
        if x.ndim not in (1, 2):
            raise InferError.invalid(f"input '{self.input_name}' must be one row or a matrix of rows, "
                                     f"got shape {list(x.shape)}")
        rows = x if x.ndim == 2 else x.reshape(1, -1)
        result = np.asarray(self._predict(rows))
        result = result.reshape(rows.shape[0], -1)
        if x.ndim == 1:
            result = result[0]
        if self._string_output:
            out = np.array([v if isinstance(v, bytes) else str(v).encode("utf-8") for v in result.flat],
                           dtype=object).reshape(result.shape)
        else:
            out = result.astype(self._dtype, copy=False)
        return {self.output_name: out}


def output_type_of(values: np.ndarray) -> str:
    """The config data type for labels or values like these (classifier labels stay labels)."""
    if values.dtype.kind in "iub":
        return "TYPE_INT64"
    if values.dtype.kind == "f":
        return "TYPE_FP64" if values.dtype == np.float64 else "TYPE_FP32"
    return "TYPE_STRING"


def two_columns(p: np.ndarray) -> np.ndarray:
    """A binary classifier's P(class 1) as [P(class 0), P(class 1)] per row, as scikit-learn gives it."""
    p = p.reshape(-1)
    return np.stack([1.0 - p, p], axis=1)
