"""Models for the scaling tests and the cold-start benchmark: a lookup table of a chosen size (its weights stay
resident while it is loaded, so its memory shows in RSS), and a Python model that loads and answers slowly."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from models import make_model

LOOKUP_ROWS = 1024  # the table is [LOOKUP_ROWS, columns]; INDEX picks one row (INT64 [1]), VALUE is it (FP32)


def lookup_model(megabytes: float, seed: int = 1) -> bytes:
    """VALUE = TABLE[INDEX]: a Gather over a float table of `megabytes` MB whose rows are `seed + row`."""
    columns = max(1, int(megabytes * 1024 * 1024 / 4 / LOOKUP_ROWS))
    table = np.repeat(np.arange(LOOKUP_ROWS, dtype=np.float32)[:, None] + seed, columns, axis=1)
    nodes = [helper.make_node("Gather", ["TABLE", "INDEX"], ["ROW"], axis=0),
             helper.make_node("ReduceMax", ["ROW"], ["VALUE"], axes=[1], keepdims=0)]
    inputs = [helper.make_tensor_value_info("INDEX", TensorProto.INT64, [1])]
    outputs = [helper.make_tensor_value_info("VALUE", TensorProto.FLOAT, [1])]
    return make_model(nodes, inputs, outputs, [numpy_helper.from_array(table, "TABLE")], name="lookup")


def lookup_config(name: str, **parameters: str) -> str:
    params = "\n".join(f'parameters {{ key: "{k}" value {{ string_value: "{v}" }} }}' for k, v in parameters.items())
    return f"""
name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: 0
input [ {{ name: "INDEX" data_type: TYPE_INT64 dims: [ 1 ] }} ]
output [ {{ name: "VALUE" data_type: TYPE_FP32 dims: [ 1 ] }} ]
{params}
"""


def add_lookup(repo: Path, name: str, megabytes: float, seed: int = 1, **parameters: str) -> Path:
    version = repo / name / "1"
    version.mkdir(parents=True, exist_ok=True)
    (version / "model.onnx").write_bytes(lookup_model(megabytes, seed))
    (repo / name / "config.pbtxt").write_text(lookup_config(name, **parameters))
    return repo / name


def lookup_body(index: int = 3) -> dict[str, object]:
    return {"inputs": [{"name": "INDEX", "shape": [1], "datatype": "INT64", "data": [index]}]}


SLOW_PY = """
    import time

    import numpy as np


    class Model:
        inputs = [{"name": "x", "datatype": "FP32", "shape": [1]}]
        outputs = [{"name": "y", "datatype": "FP32", "shape": [1]}]

        def load(self):
            time.sleep(LOAD_S)

        def predict(self, inputs):
            time.sleep(PREDICT_S)
            return {"y": inputs["x"] * 2}
"""


def add_slow_python(repo: Path, name: str, load_s: float, predict_s: float, config: str = "") -> Path:
    """A Python model (instance processes) that takes `load_s` to load and `predict_s` per request."""
    version = repo / name / "1"
    version.mkdir(parents=True, exist_ok=True)
    source = textwrap.dedent(SLOW_PY).replace("LOAD_S", repr(load_s)).replace("PREDICT_S", repr(predict_s))
    (version / "model.py").write_text(source)
    if config:
        (repo / name / "config.pbtxt").write_text(config)
    return repo / name


def slow_body(x: float = 1.5) -> dict[str, object]:
    return {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [x]}]}


def process_rss(pid: int) -> int:
    """Resident bytes of a process, read from /proc."""
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * 4096
