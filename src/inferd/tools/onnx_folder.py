"""An ONNX model in a repository folder: `REPO/NAME/VERSION/model.onnx` beside `REPO/NAME/config.pbtxt`.

The config is the one the server would complete from the file (the ONNX Runtime backend's own auto-complete), so
what `inferd convert` writes and what `inferd serve` reads cannot drift apart.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf import text_format

from ..config import ModelConfig, parse_config
from .arrays import InputSpec
from .errors import ToolError

MODEL_FILE = "model.onnx"
CONFIG_FILE = "config.pbtxt"

_ORT_TO_NUMPY = {
    "tensor(bool)": np.bool_, "tensor(uint8)": np.uint8, "tensor(uint16)": np.uint16, "tensor(uint32)": np.uint32,
    "tensor(uint64)": np.uint64, "tensor(int8)": np.int8, "tensor(int16)": np.int16, "tensor(int32)": np.int32,
    "tensor(int64)": np.int64, "tensor(float16)": np.float16, "tensor(float)": np.float32,
    "tensor(double)": np.float64,
}


def session(path: Path) -> Any:
    """An ONNX Runtime session of one file on the CPU (one thread pool per session, ORT's defaults)."""
    import onnxruntime as ort

    try:
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT's own exception types
        raise ToolError(f"onnxruntime cannot load {path}: {' '.join(str(exc).split())}") from None


def input_specs(sess: Any) -> list[InputSpec]:
    specs = []
    for tensor in sess.get_inputs():
        if tensor.type not in _ORT_TO_NUMPY:
            raise ToolError(f"input '{tensor.name}' is of type {tensor.type}, which the tools cannot feed")
        shape = tuple(d if isinstance(d, int) and d > 0 else None for d in tensor.shape)
        specs.append(InputSpec(tensor.name, np.dtype(_ORT_TO_NUMPY[tensor.type]), shape))
    return specs


def run(sess: Any, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, dict(inputs)), strict=True))


def write_model(model_dir: Path, version: int, model: Any) -> Path:
    """Save an onnx.ModelProto as VERSION/model.onnx (weights over 2 GB beside it, as ONNX stores them)."""
    import onnx

    path = model_dir / str(version) / MODEL_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    large = model.ByteSize() > 2**31 - 2**20
    onnx.save_model(model, str(path), save_as_external_data=large, location=f"{MODEL_FILE}.data" if large else None)
    return path


def write_config(model_dir: Path, name: str, version: int, max_batch_size: int) -> ModelConfig:
    """config.pbtxt completed from VERSION/model.onnx by the ONNX Runtime backend, batched when
    `max_batch_size` > 0 (the model's first dimension must then be free on every input and output)."""
    from ..backends.onnxruntime import OnnxRuntimeBackend

    files = model_dir / str(version)
    if max_batch_size > 0:
        sess = session(files / MODEL_FILE)
        fixed = [f"'{t.name}' {list(t.shape)}" for t in [*sess.get_inputs(), *sess.get_outputs()]
                 if not t.shape or (isinstance(t.shape[0], int) and t.shape[0] > 0)]
        if fixed:
            raise ToolError(f"--max-batch-size {max_batch_size} needs a free first dimension, and the model fixes "
                            f"it on {', '.join(fixed)}: use --max-batch-size 0")
    config = ModelConfig(name=name, platform="onnxruntime_onnx", max_batch_size=max(max_batch_size, 0))
    if max_batch_size > 1:
        config.dynamic_batching.SetInParent()
    config = OnnxRuntimeBackend().autocomplete(config, files)
    (model_dir / CONFIG_FILE).write_text(text_format.MessageToString(config))
    return config


def read_model_config(model_dir: Path) -> ModelConfig:
    path = model_dir / CONFIG_FILE
    if not path.is_file():
        raise ToolError(f"{path}: no such file (a model folder holds config.pbtxt and version folders)")
    try:
        return parse_config(path.read_text())
    except ValueError as exc:
        raise ToolError(f"{path}: {exc}") from None


def versions(model_dir: Path) -> list[int]:
    """The version folders that hold a model.onnx, in order."""
    found = [int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()] if model_dir.is_dir() else []
    return sorted(v for v in found if (model_dir / str(v) / MODEL_FILE).is_file())


_OUR_POLICY = re.compile(r"^version_policy: \{ specific: \{ versions: \[ ([\d, ]+) \] \} \}$", re.MULTILINE)


def serve_versions(model_dir: Path, config: ModelConfig, wanted: Sequence[int]) -> str:
    """Make the config serve every version in `wanted` when it says nothing of versions (Triton's default serves
    the latest only), or when the version_policy line is one this function wrote: that one line is written, the
    rest of the file left as it is. Returns what was done, or what the user should set, in one sentence."""
    policy = config.version_policy
    which = policy.WhichOneof("policy_choice")
    if which == "all" or (which == "specific" and set(wanted) <= set(policy.specific.versions)):
        return f"the config's version_policy serves versions {', '.join(str(v) for v in sorted(wanted))}"
    path = model_dir / CONFIG_FILE
    text = path.read_text()
    ours = _OUR_POLICY.search(text)
    listed = [int(v) for v in ours.group(1).split(",")] if ours else []
    served = sorted({*wanted, *listed})
    line = f"version_policy: {{ specific: {{ versions: [ {', '.join(str(v) for v in served)} ] }} }}"
    if ours is not None:
        path.write_text(text[:ours.start()] + line + text[ours.end():])
    elif which is None:
        path.write_text(text + ("" if text.endswith("\n") or not text else "\n") + line + "\n")
    else:
        current = re.sub(r"\s+", " ", str(policy)).strip()
        return f"the config's version_policy ({current}) does not serve them all: set `{line}` to serve both"
    return f"set `{line}` in {path} so the source and the new version both serve"
