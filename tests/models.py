"""Model repositories for the tests, built with the onnx helper API (nothing is downloaded).

`build_main_repository` lays out every model the session server serves, the broken ones included on purpose;
the smaller builders make repositories for tests that start their own server.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8

# V2 datatype -> (ONNX element type, ModelConfig data_type, numpy dtype).
DATATYPES: dict[str, tuple[int, str, type]] = {
    "BOOL": (TensorProto.BOOL, "TYPE_BOOL", np.bool_),
    "UINT8": (TensorProto.UINT8, "TYPE_UINT8", np.uint8),
    "UINT16": (TensorProto.UINT16, "TYPE_UINT16", np.uint16),
    "UINT32": (TensorProto.UINT32, "TYPE_UINT32", np.uint32),
    "UINT64": (TensorProto.UINT64, "TYPE_UINT64", np.uint64),
    "INT8": (TensorProto.INT8, "TYPE_INT8", np.int8),
    "INT16": (TensorProto.INT16, "TYPE_INT16", np.int16),
    "INT32": (TensorProto.INT32, "TYPE_INT32", np.int32),
    "INT64": (TensorProto.INT64, "TYPE_INT64", np.int64),
    "FP16": (TensorProto.FLOAT16, "TYPE_FP16", np.float16),
    "FP32": (TensorProto.FLOAT, "TYPE_FP32", np.float32),
    "FP64": (TensorProto.DOUBLE, "TYPE_FP64", np.float64),
    "BYTES": (TensorProto.STRING, "TYPE_STRING", np.object_),
}

# Names of the models in the main repository, for the tests that refer to them.
SIMPLE = "simple"
SIMPLE_STRING = "simple_string"
AUTO = "auto_neg"  # no config.pbtxt
NOBATCH = "nobatch_double"  # max_batch_size 0, FP32 [2, 3], OUTPUT0 = 2 * INPUT0
VERSIONED = "two_versions"  # version 1: INPUT0 + 1, version 2: INPUT0 + 2 (version_policy all)
SLOW = "slow"  # loops DELAY[0] times over a matrix product, then OUTPUT0 = INPUT0
BROKEN = "broken"  # config.pbtxt with an unknown field
BAD_DTYPE = "bad_dtype"  # config says TYPE_FP32 where the model file has INT32
NO_DTYPE = "no_dtype"  # input without data_type (TYPE_INVALID): only auto-complete can fill it in
BAD_DIMS = "bad_dims"  # a dimension of 0
MISSING_FILE = "missing_file"  # version folder without model.onnx
BROKEN_MODELS = (BROKEN, BAD_DIMS, MISSING_FILE)  # and BAD_DTYPE, whose fault only the model file shows


def identity_name(datatype: str) -> str:
    return f"identity_{datatype.lower()}"


def _value(name: str, elem: int, shape: Sequence[int | str]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, list(shape))


def make_model(nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto],
               outputs: list[onnx.ValueInfoProto], initializers: Iterable[onnx.TensorProto] = (),
               name: str = "graph") -> bytes:
    graph = helper.make_graph(nodes, name, inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION,
                              producer_name="inferd-tests")
    onnx.checker.check_model(model)
    return model.SerializeToString()


def write_model(repo: Path, name: str, model: bytes | None, config: str | None,
                versions: dict[int, bytes | None] | None = None) -> Path:
    """`<repo>/<name>/config.pbtxt` (if `config`) and `<repo>/<name>/<v>/model.onnx` for each version.

    `versions` maps version numbers to model bytes (None: an empty version folder); by default version 1 holds
    `model`.
    """
    model_dir = repo / name
    model_dir.mkdir(parents=True, exist_ok=True)
    if config is not None:
        (model_dir / "config.pbtxt").write_text(config)
    for version, data in (versions if versions is not None else {1: model}).items():
        version_dir = model_dir / str(version)
        version_dir.mkdir(exist_ok=True)
        if data is not None:
            (version_dir / "model.onnx").write_bytes(data)
    return model_dir


def tensor_config(kind: str, name: str, data_type: str, dims: Sequence[int]) -> str:
    return f'{kind} [ {{ name: "{name}" data_type: {data_type} dims: [ {", ".join(map(str, dims))} ] }} ]'


# ---- the models ----

def simple_model() -> bytes:
    """Triton's `simple`: OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1, INT32 [batch, 16]."""
    io = [_value(n, TensorProto.INT32, ["batch", 16]) for n in ("INPUT0", "INPUT1", "OUTPUT0", "OUTPUT1")]
    nodes = [helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]),
             helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"])]
    return make_model(nodes, io[:2], io[2:], name="simple")


SIMPLE_CONFIG = """
name: "simple"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [
  { name: "INPUT0" data_type: TYPE_INT32 dims: [ 16 ] },
  { name: "INPUT1" data_type: TYPE_INT32 dims: [ 16 ] }
]
output [
  { name: "OUTPUT0" data_type: TYPE_INT32 dims: [ 16 ] },
  { name: "OUTPUT1" data_type: TYPE_INT32 dims: [ 16 ] }
]
"""


def simple_string_model() -> bytes:
    io = [_value(n, TensorProto.STRING, ["batch", 16]) for n in ("INPUT0", "OUTPUT0")]
    return make_model([helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"])], io[:1], io[1:], name="simple_string")


SIMPLE_STRING_CONFIG = """
name: "simple_string"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_STRING dims: [ 16 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_STRING dims: [ 16 ] } ]
"""


def identity_model(datatype: str) -> bytes:
    elem = DATATYPES[datatype][0]
    io = [_value(n, elem, ["batch", "n"]) for n in ("INPUT0", "OUTPUT0")]
    return make_model([helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"])], io[:1], io[1:],
                      name=identity_name(datatype))


def identity_config(datatype: str) -> str:
    data_type = DATATYPES[datatype][1]
    return (f'name: "{identity_name(datatype)}"\nbackend: "onnxruntime"\nmax_batch_size: 8\n'
            f'{tensor_config("input", "INPUT0", data_type, [-1])}\n'
            f'{tensor_config("output", "OUTPUT0", data_type, [-1])}\n')


def neg_model() -> bytes:
    """FP32 [batch, 4] -> its negation; served without config.pbtxt (auto-complete)."""
    io = [_value(n, TensorProto.FLOAT, ["batch", 4]) for n in ("INPUT0", "OUTPUT0")]
    return make_model([helper.make_node("Neg", ["INPUT0"], ["OUTPUT0"])], io[:1], io[1:], name=AUTO)


def double_model() -> bytes:
    """FP32 [2, 3] (no batch dimension) -> 2 * INPUT0."""
    io = [_value(n, TensorProto.FLOAT, [2, 3]) for n in ("INPUT0", "OUTPUT0")]
    return make_model([helper.make_node("Add", ["INPUT0", "INPUT0"], ["OUTPUT0"])], io[:1], io[1:], name=NOBATCH)


NOBATCH_CONFIG = f"""
name: "{NOBATCH}"
platform: "onnxruntime_onnx"
max_batch_size: 0
{tensor_config("input", "INPUT0", "TYPE_FP32", [2, 3])}
{tensor_config("output", "OUTPUT0", "TYPE_FP32", [2, 3])}
"""


def add_constant_model(constant: int) -> bytes:
    """INT32 [batch, n] -> INPUT0 + constant."""
    io = [_value(n, TensorProto.INT32, ["batch", "n"]) for n in ("INPUT0", "OUTPUT0")]
    const = numpy_helper.from_array(np.array(constant, dtype=np.int32), "C")
    return make_model([helper.make_node("Add", ["INPUT0", "C"], ["OUTPUT0"])], io[:1], io[1:], [const],
                      name=f"add_{constant}")


VERSIONED_CONFIG = f"""
name: "{VERSIONED}"
platform: "onnxruntime_onnx"
max_batch_size: 8
version_policy {{ all {{ }} }}
{tensor_config("input", "INPUT0", "TYPE_INT32", [-1])}
{tensor_config("output", "OUTPUT0", "TYPE_INT32", [-1])}
"""


def matmul_loop_body(size: int) -> onnx.GraphProto:
    """The body of a Loop that multiplies a [size, size] accumulator by 0.5·I and applies tanh: real work per trip."""
    weight = numpy_helper.from_array(np.eye(size, dtype=np.float32) * np.float32(0.5), "W")
    return helper.make_graph(
        [helper.make_node("MatMul", ["acc", "W"], ["product"]),
         helper.make_node("Tanh", ["product"], ["acc_out"]),
         helper.make_node("Identity", ["cond"], ["cond_out"])],
        "body",
        [_value("i", TensorProto.INT64, []), _value("cond", TensorProto.BOOL, []),
         _value("acc", TensorProto.FLOAT, [size, size])],
        [_value("cond_out", TensorProto.BOOL, []), _value("acc_out", TensorProto.FLOAT, [size, size])],
        [weight],
    )


def slow_model(size: int = 256) -> bytes:
    """OUTPUT0 = INPUT0 (FP32 [4]) after DELAY[0] rounds of a [size, size] matrix product (a busy model)."""
    body = matmul_loop_body(size)
    start = numpy_helper.from_array(np.ones((size, size), dtype=np.float32), "start")
    keep_going = numpy_helper.from_array(np.array(True), "keep_going")
    nodes = [
        helper.make_node("Squeeze", ["DELAY"], ["trips"]),
        helper.make_node("Loop", ["trips", "keep_going", "start"], ["final"], body=body),
        helper.make_node("ReduceSum", ["final"], ["WORK"], keepdims=1),
        helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"]),
    ]
    inputs = [_value("INPUT0", TensorProto.FLOAT, [4]), _value("DELAY", TensorProto.INT64, [1])]
    outputs = [_value("OUTPUT0", TensorProto.FLOAT, [4]), _value("WORK", TensorProto.FLOAT, [1, 1])]
    return make_model(nodes, inputs, outputs, [start, keep_going], name=SLOW)


SLOW_CONFIG = f"""
name: "{SLOW}"
platform: "onnxruntime_onnx"
max_batch_size: 0
input [
  {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] }},
  {{ name: "DELAY" data_type: TYPE_INT64 dims: [ 1 ] }}
]
output [
  {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] }},
  {{ name: "WORK" data_type: TYPE_FP32 dims: [ 1, 1 ] }}
]
# Two single-threaded instances: two requests run side by side, each at a speed that depends little on the machine.
instance_group [ {{ count: 2 kind: KIND_CPU }} ]
parameters {{ key: "intra_op_thread_count" value {{ string_value: "1" }} }}
"""

BROKEN_CONFIG = SIMPLE_CONFIG.replace('name: "simple"', 'name: "broken"\nnot_a_field: 1')
BAD_DTYPE_CONFIG = f"""
name: "{BAD_DTYPE}"
platform: "onnxruntime_onnx"
max_batch_size: 8
{tensor_config("input", "INPUT0", "TYPE_FP32", [-1])}
{tensor_config("output", "OUTPUT0", "TYPE_FP32", [-1])}
"""
NO_DTYPE_CONFIG = f"""
name: "{NO_DTYPE}"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ {{ name: "INPUT0" dims: [ -1 ] }} ]
output [ {{ name: "OUTPUT0" data_type: TYPE_INT32 dims: [ -1 ] }} ]
"""
BAD_DIMS_CONFIG = f"""
name: "{BAD_DIMS}"
platform: "onnxruntime_onnx"
max_batch_size: 8
{tensor_config("input", "INPUT0", "TYPE_INT32", [0])}
{tensor_config("output", "OUTPUT0", "TYPE_INT32", [-1])}
"""
MISSING_FILE_CONFIG = f"""
name: "{MISSING_FILE}"
platform: "onnxruntime_onnx"
max_batch_size: 8
{tensor_config("input", "INPUT0", "TYPE_INT32", [-1])}
{tensor_config("output", "OUTPUT0", "TYPE_INT32", [-1])}
"""


# ---- repositories ----

def add_simple(repo: Path) -> None:
    write_model(repo, SIMPLE, simple_model(), SIMPLE_CONFIG)


def add_auto(repo: Path) -> None:
    write_model(repo, AUTO, neg_model(), None)


def add_broken(repo: Path) -> None:
    write_model(repo, BROKEN, simple_model(), BROKEN_CONFIG)


def add_no_dtype(repo: Path) -> None:
    write_model(repo, NO_DTYPE, add_constant_model(1), NO_DTYPE_CONFIG)


def add_slow(repo: Path) -> None:
    write_model(repo, SLOW, slow_model(), SLOW_CONFIG)


def build_main_repository(repo: Path) -> Path:
    """Every model the session server serves, good and (on purpose) broken."""
    repo.mkdir(parents=True, exist_ok=True)
    add_simple(repo)
    write_model(repo, SIMPLE_STRING, simple_string_model(), SIMPLE_STRING_CONFIG)
    for datatype in DATATYPES:
        write_model(repo, identity_name(datatype), identity_model(datatype), identity_config(datatype))
    add_auto(repo)
    write_model(repo, NOBATCH, double_model(), NOBATCH_CONFIG)
    write_model(repo, VERSIONED, None, VERSIONED_CONFIG, {1: add_constant_model(1), 2: add_constant_model(2)})
    add_slow(repo)
    add_broken(repo)
    write_model(repo, BAD_DTYPE, add_constant_model(1), BAD_DTYPE_CONFIG)
    write_model(repo, BAD_DIMS, add_constant_model(1), BAD_DIMS_CONFIG)
    write_model(repo, MISSING_FILE, None, MISSING_FILE_CONFIG, {1: None})
    return repo


# ---- test data ----

def sample(datatype: str, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Distinct, representative values of a datatype (extremes included where the shape has room)."""
    rng = np.random.default_rng(seed)
    count = int(np.prod(shape))
    dtype = DATATYPES[datatype][2]
    if datatype == "BYTES":
        words = [f"word-{seed}-{i}-é".encode() for i in range(count)]
        return np.array(words, dtype=np.object_).reshape(shape)
    if datatype == "BOOL":
        return (rng.integers(0, 2, count) == 1).reshape(shape)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        values = rng.integers(info.min, info.max, count, dtype=dtype, endpoint=True)
        if count >= 2:
            values[0], values[1] = info.min, info.max
        return values.reshape(shape)
    values = (rng.standard_normal(count) * 100).astype(dtype)
    if count >= 2:
        values[0], values[1] = np.finfo(dtype).max, np.finfo(dtype).tiny
    return values.reshape(shape)
