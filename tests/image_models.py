"""Small image classifiers built with the onnx helper API (seeded weights), with labels, for the image client and
the dashboard; and images to feed them, drawn with Pillow.

A classifier is one convolution over the whole (SIZE x SIZE) image to CLASSES scores: cheap, yet every pixel and
channel moves the scores, so a wrong resize, scaling or layout changes the top classes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from models import make_model

SIZE = 8
CLASSES = 10
LABELS = [f"label_{i}" for i in range(CLASSES)]


def classifier_model(layout: str, batching: bool, seed: int = 7) -> bytes:
    """FP32 image [batch?, 3, SIZE, SIZE] (NCHW) or [batch?, SIZE, SIZE, 3] (NHWC) -> FP32 scores [batch?, CLASSES]."""
    rng = np.random.default_rng(seed)
    weight = numpy_helper.from_array(rng.normal(0, 0.1, (CLASSES, 3, SIZE, SIZE)).astype(np.float32), "w")
    bias = numpy_helper.from_array(rng.normal(0, 0.1, (CLASSES,)).astype(np.float32), "b")
    image = [SIZE, SIZE, 3] if layout == "NHWC" else [3, SIZE, SIZE]
    shape_in = (["batch"] if batching else []) + image
    nodes = []
    x = "image"
    if not batching:
        nodes.append(helper.make_node("Unsqueeze", [x, "zero"], ["batched"]))
        x = "batched"
    if layout == "NHWC":
        nodes.append(helper.make_node("Transpose", [x], ["nchw"], perm=[0, 3, 1, 2]))
        x = "nchw"
    nodes.append(helper.make_node("Conv", [x, "w", "b"], ["conv"]))
    nodes.append(helper.make_node("Flatten", ["conv"], ["flat"], axis=1))
    out = "scores"
    if batching:
        nodes.append(helper.make_node("Identity", ["flat"], [out]))
    else:
        nodes.append(helper.make_node("Squeeze", ["flat", "zero"], [out]))
    zero = numpy_helper.from_array(np.array([0], dtype=np.int64), "zero")
    inputs = [helper.make_tensor_value_info("image", TensorProto.FLOAT, shape_in)]
    outputs = [helper.make_tensor_value_info(out, TensorProto.FLOAT, (["batch"] if batching else []) + [CLASSES])]
    constants = [weight, bias] if batching else [weight, bias, zero]
    return make_model(nodes, inputs, outputs, constants, name=f"classifier_{layout}")


def classifier_config(name: str, layout: str, batching: bool) -> str:
    dims = f"{SIZE}, {SIZE}, 3" if layout == "NHWC" else f"3, {SIZE}, {SIZE}"
    return f"""name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: {4 if batching else 0}
input [ {{ name: "image" data_type: TYPE_FP32 format: FORMAT_{layout} dims: [ {dims} ] }} ]
output [ {{ name: "scores" data_type: TYPE_FP32 dims: [ {CLASSES} ] label_filename: "labels.txt" }} ]
"""


def add_classifier(repo: Path, name: str, layout: str = "NCHW", batching: bool = True) -> Path:
    folder = repo / name
    (folder / "1").mkdir(parents=True, exist_ok=True)
    (folder / "1" / "model.onnx").write_bytes(classifier_model(layout, batching))
    (folder / "config.pbtxt").write_text(classifier_config(name, layout, batching))
    (folder / "labels.txt").write_text("".join(f"{label}\n" for label in LABELS))
    return folder


def draw_image(path: Path, seed: int, size: tuple[int, int] = (23, 17)) -> Path:
    """A noisy RGB picture of another size than the models' (so the client must resize it)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, "RGB").save(path)
    return path
