"""Models and configs shared by the ensemble tests: a fixed-matrix ONNX `scorer` and ensemble folders."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from models import make_model

WEIGHTS = np.array([[1.0, -1.0, 0.5], [0.5, 2.0, -1.0], [-1.0, 0.0, 1.5], [0.25, 0.5, 0.75]], dtype=np.float32)


def tensor(kind: str, name: str, dtype: str, dims: list[int]) -> str:
    return f'{kind} [ {{ name: "{name}" data_type: {dtype} dims: [ {", ".join(map(str, dims))} ] }} ]'


def scorer_model() -> bytes:
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch", 3])
    w = numpy_helper.from_array(WEIGHTS, "W")
    return make_model([helper.make_node("MatMul", ["X", "W"], ["Y"])], [x], [y], [w], name="scorer")


def write_scorer(repo: Path, name: str = "scorer") -> None:
    folder = repo / name
    (folder / "1").mkdir(parents=True)
    (folder / "1" / "model.onnx").write_bytes(scorer_model())
    (folder / "config.pbtxt").write_text(
        f'name: "{name}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 8\n'
        f'{tensor("input", "X", "TYPE_FP32", [4])}\n{tensor("output", "Y", "TYPE_FP32", [3])}\n')


def ensemble(repo: Path, name: str, body: str, *, empty_version: bool = True) -> None:
    folder = repo / name
    folder.mkdir(parents=True)
    if empty_version:
        (folder / "1").mkdir()
    (folder / "config.pbtxt").write_text(f'name: "{name}"\nplatform: "ensemble"\n{textwrap.dedent(body)}')
