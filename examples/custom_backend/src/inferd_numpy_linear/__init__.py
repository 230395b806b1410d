"""An inferd backend plugin: `y = x @ weight + bias` for a linear model stored as `model.npz`.

It follows inferd's Backend contract (see `inferd.backends.base.Backend`) and nothing else of inferd's is needed
beyond `inferd.config` for the model configuration: the entry point in pyproject.toml registers it under the
name `numpy_linear`. Save a model with::

    numpy.savez("model.npz", weight=w, bias=b)     # w: [n_in, n_out], b: [n_out]

Auto-complete names its tensors `INPUT0` (FP32 [n_in]) and `OUTPUT0` (FP32 [n_out]) and makes it batchable
(max_batch_size 64 with dynamic batching), since a matrix product takes any number of rows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from inferd.config import DataType, ModelConfig

FP32 = DataType.Value("TYPE_FP32")

__all__ = ["NumpyLinearBackend"]


def _arrays(config: ModelConfig, files: Path) -> tuple[np.ndarray, np.ndarray]:
    path = files / (config.default_model_filename or NumpyLinearBackend.default_filename)
    with np.load(path, allow_pickle=False) as data:  # data, never code
        weight = np.asarray(data["weight"], dtype=np.float32)
        bias = np.asarray(data["bias"], dtype=np.float32)
    if weight.ndim != 2 or bias.shape != (weight.shape[1],):
        raise ValueError(f"{path.name}: weight must be [n_in, n_out] and bias [n_out], got "
                         f"{list(weight.shape)} and {list(bias.shape)}")
    return weight, bias


class NumpyLinearBackend:
    """One loaded linear model. numpy's matrix product releases the GIL, so instances run on threads."""

    releases_gil = True
    default_filename = "model.npz"  # the file that means this backend when no config names one
    other_filenames: tuple[str, ...] = ()
    platforms: tuple[str, ...] = ()

    def __init__(self) -> None:
        self._weight: np.ndarray | None = None
        self._bias: np.ndarray | None = None
        self._input = "INPUT0"
        self._output = "OUTPUT0"

    def autocomplete(self, config: ModelConfig, files: Path) -> ModelConfig:
        weight, _ = _arrays(config, files)
        if not config.input and not config.output:
            if config.max_batch_size == 0:
                config.max_batch_size = 64
                config.dynamic_batching.SetInParent()
            tensor = config.input.add()
            tensor.name, tensor.data_type = "INPUT0", FP32
            tensor.dims.append(weight.shape[0])
            tensor = config.output.add()
            tensor.name, tensor.data_type = "OUTPUT0", FP32
            tensor.dims.append(weight.shape[1])
        return config

    def load(self, config: ModelConfig, files: Path, device: str) -> None:
        if device != "cpu":
            raise ValueError(f"numpy_linear runs on the CPU only (the instance asks for {device})")
        self._weight, self._bias = _arrays(config, files)
        if len(config.input) != 1 or len(config.output) != 1:
            raise ValueError("a numpy_linear model has one input and one output")
        self._input, self._output = config.input[0].name, config.output[0].name

    def execute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._weight is None or self._bias is None:
            raise RuntimeError("model instance is not loaded")
        x = inputs[self._input]
        return {self._output: (x.astype(np.float32, copy=False) @ self._weight + self._bias).astype(np.float32)}

    def unload(self) -> None:
        self._weight = self._bias = None
