"""TensorFlow SavedModels to ONNX with tf2onnx, from the `serving_default` signature (the one TF Serving and
inferd's TensorFlow backend serve), keeping the signature's input and output names."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..arrays import InputSpec
from ..errors import ToolError, need

SIGNATURE = "serving_default"


class SavedModelOriginal:
    framework = "TensorFlow SavedModel"
    default_opset = 17

    def __init__(self, path: Path) -> None:
        self.path = path
        tf = need("tensorflow", "tensorflow-cpu", "tensorflow")
        try:
            self._loaded = tf.saved_model.load(str(path))
        except Exception as exc:  # TF's own error types for a broken folder
            raise ToolError(f"{path}: TensorFlow cannot load it ({' '.join(str(exc).split())[:200]})") from None
        if SIGNATURE not in self._loaded.signatures:
            raise ToolError(f"{path}: no '{SIGNATURE}' signature (it has: {', '.join(self._loaded.signatures)})")
        self._function = self._loaded.signatures[SIGNATURE]

    def input_specs(self) -> list[InputSpec] | None:
        specs = []
        for name, spec in sorted(self._function.structured_input_signature[1].items()):
            shape = tuple(None if d is None else int(d) for d in spec.shape.as_list())
            specs.append(InputSpec(name, np.dtype(spec.dtype.as_numpy_dtype), shape))
        return specs

    def example(self) -> dict[str, np.ndarray] | None:
        return None

    def predict(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        import tensorflow as tf

        outputs = self._function(**{name: tf.constant(array) for name, array in inputs.items()})
        return {name: tensor.numpy() for name, tensor in outputs.items()}

    def to_onnx(self, inputs: Mapping[str, np.ndarray], opset: int, batched: bool) -> Any:
        need("tf2onnx", "tf2onnx")
        from tf2onnx import convert, tf_loader

        graph, input_names, output_names, renames = tf_loader.from_saved_model(
            str(self.path), None, None, tag="serve", signatures=[SIGNATURE], return_tensors_to_rename=True)
        model, _ = convert.from_graph_def(graph, input_names=input_names, output_names=output_names, opset=opset,
                                          tensors_to_rename=renames)
        return model
