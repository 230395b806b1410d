"""PyTorch models to ONNX with torch.onnx: TorchScript files through its TorchScript exporter, torch.export
programs (.pt2) through its dynamo exporter (which needs onnxscript).

Inputs and outputs are named as inferd's (and Triton's) PyTorch backend names them, INPUT__0.. and OUTPUT__0.., so
a client of the served PyTorch model works with the converted one unchanged.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..arrays import InputSpec
from ..errors import ToolError, need


def open_torch(path: Path) -> Any:
    torch = need("torch", "torch", "torch")
    if path.suffix.lower() == ".pt2":
        try:
            return ExportedProgramOriginal(torch.export.load(str(path)))
        except Exception as exc:  # torch raises several types for a file that is not an exported program
            raise ToolError(f"{path}: not a torch.export program ({' '.join(str(exc).split())[:200]})") from None
    try:
        return TorchScriptOriginal(torch.jit.load(str(path), map_location="cpu"))
    except Exception as exc:  # a pickled state_dict or a full nn.Module pickle is not TorchScript
        raise ToolError(f"{path}: not a TorchScript file ({' '.join(str(exc).split())[:200]}); save the model with "
                        "torch.jit.script(model).save(path) or torch.export.save(torch.export.export(...), "
                        "'model.pt2')") from None


def _leaves(value: Any) -> list[Any]:
    """The output tensors in order (a tensor, or tuples, lists and dicts of them)."""
    if isinstance(value, (tuple, list)):
        return [leaf for item in value for leaf in _leaves(item)]
    if isinstance(value, dict):
        return [leaf for item in value.values() for leaf in _leaves(item)]
    return [value]


def _input_names(count: int) -> list[str]:
    return [f"INPUT__{i}" for i in range(count)]


def _predict(module: Any, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    import torch

    with torch.no_grad():
        outputs = _leaves(module(*(torch.from_numpy(np.array(a)) for a in inputs.values())))
    return {f"OUTPUT__{i}": t.detach().cpu().numpy() for i, t in enumerate(outputs)}


class TorchScriptOriginal:
    framework = "PyTorch (TorchScript)"
    default_opset = 17

    def __init__(self, module: Any) -> None:
        self.module = module.eval()

    def input_specs(self) -> list[InputSpec] | None:
        return None  # a TorchScript file does not record input shapes: --sample-input says them

    def example(self) -> dict[str, np.ndarray] | None:
        return None

    def predict(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return _predict(self.module, inputs)

    def to_onnx(self, inputs: Mapping[str, np.ndarray], opset: int, batched: bool) -> Any:
        import onnx
        import torch

        names = list(inputs)
        outputs = list(self.predict(inputs))
        axes = {n: {0: "batch"} for n in [*names, *outputs]} if batched else None
        buffer = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
            torch.onnx.export(self.module, tuple(torch.from_numpy(np.array(a)) for a in inputs.values()), buffer,
                              input_names=names, output_names=outputs, dynamic_axes=axes, opset_version=opset,
                              dynamo=False)
        return onnx.load_from_string(buffer.getvalue())


class ExportedProgramOriginal:
    framework = "PyTorch (torch.export)"
    default_opset = 18  # the lowest the dynamo exporter writes

    def __init__(self, program: Any) -> None:
        self.program = program

    def _example_args(self) -> tuple[Any, ...] | None:
        example = getattr(self.program, "example_inputs", None)
        if not example or example[1]:  # keyword inputs have no position to name them by
            return None
        return tuple(example[0])

    def input_specs(self) -> list[InputSpec] | None:
        args = self._example_args()
        if args is None:
            return None
        specs = []
        for name, arg in zip(_input_names(len(args)), args, strict=True):
            array = arg.detach().cpu().numpy()
            specs.append(InputSpec(name, array.dtype, (None, *array.shape[1:]) if array.ndim else ()))
        return specs

    def example(self) -> dict[str, np.ndarray] | None:
        args = self._example_args()
        if args is None:
            return None
        return {n: a.detach().cpu().numpy() for n, a in zip(_input_names(len(args)), args, strict=True)}

    def predict(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return _predict(self.program.module(), inputs)

    def to_onnx(self, inputs: Mapping[str, np.ndarray], opset: int, batched: bool) -> Any:
        import torch

        need("onnxscript", "onnxscript")
        outputs = list(self.predict(inputs))
        # The program's own shapes are kept: a batch dimension is free when torch.export.Dim made it so.
        onnx_program = torch.onnx.export(self.program, tuple(torch.from_numpy(np.array(a)) for a in inputs.values()),
                                         input_names=list(inputs), output_names=outputs, opset_version=opset,
                                         dynamo=True, verbose=False)
        return onnx_program.model_proto
