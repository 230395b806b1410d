"""Triton's classification extension: an output returned as its top-k classes instead of its scores.

Each class is the BYTES string `"<score>:<index>"` or `"<score>:<index>:<label>"`, highest score first, with the
score written as Triton writes it (C++ `std::to_string`: floats with six decimals, integers as they are).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .config import ConfigError, ModelConfig
from .paths import UnsafePathError, safe_join
from .types import InferError, datatype_of

__all__ = ["CLASSIFICATION", "class_count", "read_labels", "top_classes"]

CLASSIFICATION = "classification"
# The datatypes Triton classifies, and FP16 (compared and written as the float it is).
_CLASSIFIABLE = frozenset("iuf")


def class_count(name: str, parameters: dict[str, Any]) -> int:
    """The `classification` parameter of a requested output: how many classes to return (0: the scores)."""
    value = parameters.get(CLASSIFICATION)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InferError.invalid(f"output '{name}': parameter 'classification' must be a non-negative integer "
                                 f"(the number of classes to return), got {value!r}")
    return value


def top_classes(name: str, scores: np.ndarray, k: int, batched: bool,
                labels: Sequence[str] = ()) -> np.ndarray:
    """The top-`k` classes of each batch row of `scores` (of all of it when not batched): BYTES [batch, k] / [k].

    Each row is flattened; k is capped at the number of classes. Ties keep the lower index first.
    """
    if scores.dtype.kind not in _CLASSIFIABLE:
        raise InferError.invalid(f"class result not available for output '{name}' due to unsupported type "
                                 f"'{datatype_of(scores)}'")
    batched = batched and scores.ndim > 0
    count = scores.shape[0] if batched else 1
    classes = scores.size // count if count else 0
    rows = scores.reshape(count, classes)
    k = min(k, classes)
    # Highest first, ties by lower index: a stable ascending sort of the reversed row, read backwards.
    order = (classes - 1 - np.argsort(rows[:, ::-1], axis=1, kind="stable"))[:, ::-1][:, :k]
    as_float = scores.dtype.kind == "f"
    strings = []
    for row, indices in zip(rows, order, strict=True):
        for index in indices.tolist():
            value = row[index]
            text = f"{float(value):f}:{index}" if as_float else f"{int(value)}:{index}"
            label = labels[index] if index < len(labels) else ""
            strings.append((f"{text}:{label}" if label else text).encode())
    result = np.array(strings, dtype=object)
    return result.reshape((count, k) if batched else (k,))


def read_labels(model_dir: Path, config: ModelConfig) -> dict[str, list[str]]:
    """The labels of each output with a `label_filename`: a file in the model folder, one label a line.

    Read when the model loads; a missing or unreadable file fails the load (ConfigError), as in Triton.
    """
    labels: dict[str, list[str]] = {}
    for output in config.output:
        if not output.label_filename:
            continue
        try:
            path = safe_join(model_dir, output.label_filename)
            labels[output.name] = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError, UnsafePathError) as exc:
            raise ConfigError(f"output '{output.name}': cannot read label_filename '{output.label_filename}': "
                              f"{exc}") from None
    return labels
