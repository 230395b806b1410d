"""NVIDIA's image classification client (`image_client.py`) as a library: what it checks in a model, how it
prepares an image, and how it prints the classes.

Kept to its behaviour so its users get the same numbers and the same lines: the model has one input of three
dimensions (CHW or HWC by the config's `format`) and one FP32 output that is a vector; an image is converted to RGB
(L for one channel), resized bilinearly to the input's size, cast to the input's datatype, scaled (INCEPTION: to
[-1, 1]; VGG: the ImageNet channel means subtracted; NONE) and laid out as the model wants. Classes come from the
server's classification extension, each printed as `    SCORE (INDEX) = LABEL`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..types import V2_TO_NUMPY

__all__ = ["SCALINGS", "ImageModel", "class_lines", "image_files", "parse_model", "preprocess"]

SCALINGS = ("NONE", "INCEPTION", "VGG")
NCHW, NHWC = "FORMAT_NCHW", "FORMAT_NHWC"


@dataclass(frozen=True, slots=True)
class ImageModel:
    """What the client needs to know of an image model."""

    max_batch_size: int
    input_name: str
    output_name: str
    channels: int
    height: int
    width: int
    format: str  # FORMAT_NCHW or FORMAT_NHWC
    datatype: str  # the input's V2 datatype


def _dims(shape: Sequence[Any]) -> list[int]:
    return [int(d) for d in shape]  # gRPC's JSON writes 64-bit integers as strings


def parse_model(metadata: Mapping[str, Any], config: Mapping[str, Any]) -> ImageModel:
    """Check that the model is an image classifier as image_client.py expects one (ValueError saying why not) and
    read its input's size and layout. `metadata` and `config` are the V2 metadata and config as JSON."""
    inputs, outputs = metadata.get("inputs", []), metadata.get("outputs", [])
    if len(inputs) != 1:
        raise ValueError(f"expecting 1 input, got {len(inputs)}")
    if len(outputs) != 1:
        raise ValueError(f"expecting 1 output, got {len(outputs)}")
    config_inputs = config.get("input", [])
    if len(config_inputs) != 1:
        raise ValueError(f"expecting 1 input in model configuration, got {len(config_inputs)}")
    name = metadata.get("name", "")
    output = outputs[0]
    if output["datatype"] != "FP32":
        raise ValueError(f"expecting output datatype to be FP32, model '{name}' output type is {output['datatype']}")
    max_batch_size = int(config.get("max_batch_size", 0))
    batching = max_batch_size > 0
    output_dims = _dims(output["shape"])[1 if batching else 0:]
    if sum(1 for d in output_dims if d > 1) > 1:
        raise ValueError("expecting model output to be a vector")
    shape = _dims(inputs[0]["shape"])
    expected = 3 + (1 if batching else 0)
    if len(shape) != expected:
        raise ValueError(f"expecting input to have {expected} dimensions, model '{name}' input has {len(shape)}")
    layout = config_inputs[0].get("format", "FORMAT_NONE")
    if layout not in (NCHW, NHWC):
        raise ValueError(f"unexpected input format {layout}, expecting {NCHW} or {NHWC}")
    dims = shape[1:] if batching else shape
    c, h, w = (dims[2], dims[0], dims[1]) if layout == NHWC else (dims[0], dims[1], dims[2])
    return ImageModel(max_batch_size, inputs[0]["name"], output["name"], c, h, w, layout, inputs[0]["datatype"])


def preprocess(image: Any, model: ImageModel, scaling: str) -> np.ndarray:
    """A PIL image as the model's input (without the batch dimension), as image_client.py prepares it."""
    from PIL import Image

    sample = image.convert("L" if model.channels == 1 else "RGB")
    resized = np.array(sample.resize((model.width, model.height), Image.Resampling.BILINEAR))
    if resized.ndim == 2:
        resized = resized[:, :, np.newaxis]
    dtype = V2_TO_NUMPY[model.datatype]
    typed = resized.astype(dtype)
    if scaling == "INCEPTION":
        scaled = (typed / 127.5) - 1
    elif scaling == "VGG":
        means = (128,) if model.channels == 1 else (123, 117, 104)
        scaled = typed - np.asarray(means, dtype=dtype)
    else:
        scaled = typed
    ordered = np.transpose(scaled, (2, 0, 1)) if model.format == NCHW else scaled
    return np.ascontiguousarray(ordered, dtype=dtype)


def class_lines(classes: np.ndarray, batching: bool) -> list[str]:
    """The lines image_client.py prints for a classification output: `    SCORE (INDEX) = LABEL` per class, for
    each image of the batch in turn (a class without a label prints `    SCORE (INDEX)`)."""
    rows = classes if batching else classes.reshape(1, -1)
    lines = []
    for row in rows:
        for item in np.asarray(row).reshape(-1):
            text = item.decode("utf-8", "replace") if isinstance(item, bytes) else str(item)
            parts = text.split(":", 2)
            line = f"    {parts[0]} ({parts[1] if len(parts) > 1 else ''})"
            lines.append(f"{line} = {parts[2]}" if len(parts) > 2 else line)
    return lines


def image_files(path: Path) -> list[Path]:
    """The images a path names: the file, or every file of a folder, in name order (as image_client.py)."""
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file())
    return [path]
