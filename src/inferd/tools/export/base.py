"""What every framework's model gives `inferd convert`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np

from ..arrays import InputSpec


class Original(Protocol):
    """A model as trained: it runs on numpy inputs and exports itself to ONNX with the same input names."""

    framework: str  # for messages: "PyTorch (TorchScript)", "scikit-learn", ...
    default_opset: int

    def input_specs(self) -> list[InputSpec] | None:
        """The inputs (names, types, shapes) when the model file says them; None when only a sample can."""

    def example(self) -> dict[str, np.ndarray] | None:
        """Inputs saved with the model (torch.export keeps its example), if any."""

    def predict(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The model's outputs, named as the ONNX model's outputs will be."""

    def to_onnx(self, inputs: Mapping[str, np.ndarray], opset: int, batched: bool) -> Any:
        """An onnx.ModelProto; `batched`: the first dimension of every input and output is left free."""
