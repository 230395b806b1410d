"""Models for the batching, queue-policy and statistics tests (onnx helper API; nothing is downloaded).

`busy_model` is a model that batches and takes a while: every execution (whatever its batch size) first runs
`trips` rounds of a [size, size] matrix product, so concurrent requests pile up in the queue behind it.
Its outputs are exact functions of the input, so every caller can check it got its own rows back:
OUTPUT0 = 2 * INPUT0 and OUTPUT1 = INPUT0 + 1.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from models import _value, make_model, matmul_loop_body, write_model


def busy_model(trips: int, size: int = 128) -> bytes:
    """FP32 [batch, n] -> OUTPUT0 = 2 * INPUT0, OUTPUT1 = INPUT0 + 1, after `trips` matrix products."""
    body = matmul_loop_body(size)
    constants = [
        numpy_helper.from_array(np.ones((size, size), dtype=np.float32), "start"),
        numpy_helper.from_array(np.array(trips, dtype=np.int64), "trips"),
        numpy_helper.from_array(np.array(True), "keep_going"),
        numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero"),
        numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one"),
        numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two"),
    ]
    nodes = [
        # The loop's start depends on the input (times zero), so it cannot be folded away at load time.
        helper.make_node("ReduceSum", ["INPUT0"], ["input_sum"], keepdims=0),
        helper.make_node("Mul", ["input_sum", "zero"], ["input_zero"]),
        helper.make_node("Add", ["start", "input_zero"], ["first"]),
        helper.make_node("Loop", ["trips", "keep_going", "first"], ["final"], body=body),
        helper.make_node("ReduceSum", ["final"], ["work"], keepdims=0),
        helper.make_node("Mul", ["work", "zero"], ["nothing"]),
        helper.make_node("Mul", ["INPUT0", "two"], ["doubled"]),
        helper.make_node("Add", ["doubled", "nothing"], ["OUTPUT0"]),
        helper.make_node("Add", ["INPUT0", "one"], ["plus_one"]),
        helper.make_node("Add", ["plus_one", "nothing"], ["OUTPUT1"]),
    ]
    inputs = [_value("INPUT0", TensorProto.FLOAT, ["batch", "n"])]
    outputs = [_value("OUTPUT0", TensorProto.FLOAT, ["batch", "n"]),
               _value("OUTPUT1", TensorProto.FLOAT, ["batch", "n"])]
    return make_model(nodes, inputs, outputs, constants, name="busy")


def busy_config(name: str, *, max_batch_size: int = 8, dims: int = 4, dynamic_batching: str | None = "",
                instances: int = 1) -> str:
    """A config for `busy_model`: one CPU instance, FP32 [dims] tensors, and the given `dynamic_batching` body
    (None: no dynamic batching block at all)."""
    batching = "" if dynamic_batching is None else f"dynamic_batching {{ {dynamic_batching} }}"
    return f"""
name: "{name}"
backend: "onnxruntime"
max_batch_size: {max_batch_size}
input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ {dims} ] }} ]
output [
  {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ {dims} ] }},
  {{ name: "OUTPUT1" data_type: TYPE_FP32 dims: [ {dims} ] }}
]
instance_group [ {{ count: {instances} kind: KIND_CPU }} ]
parameters {{ key: "intra_op_thread_count" value {{ string_value: "1" }} }}
{batching}
"""


def add_busy(repo: Path, name: str, trips: int, **config: object) -> None:
    write_model(repo, name, busy_model(trips), busy_config(name, **config))  # type: ignore[arg-type]


def picky_model() -> bytes:
    """INT32 [batch, n] -> OUTPUT0 = INPUT0, but only when n is a multiple of 4: otherwise ONNX Runtime fails
    while executing (a reshape to [-1, 4]), which is what a backend failure looks like to the server."""
    io = [_value(n, TensorProto.INT32, ["batch", "n"]) for n in ("INPUT0", "OUTPUT0")]
    constants = [numpy_helper.from_array(np.array([-1, 4], dtype=np.int64), "fours")]
    nodes = [
        helper.make_node("Reshape", ["INPUT0", "fours"], ["grouped"]),
        helper.make_node("Shape", ["INPUT0"], ["shape"]),
        helper.make_node("Reshape", ["grouped", "shape"], ["OUTPUT0"]),
    ]
    return make_model(nodes, io[:1], io[1:], constants, name="picky")


def picky_config(name: str) -> str:
    return f"""
name: "{name}"
backend: "onnxruntime"
max_batch_size: 8
input [ {{ name: "INPUT0" data_type: TYPE_INT32 dims: [ -1 ] }} ]
output [ {{ name: "OUTPUT0" data_type: TYPE_INT32 dims: [ -1 ] }} ]
"""
