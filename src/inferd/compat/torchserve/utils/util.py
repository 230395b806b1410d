"""TorchServe's `ts.utils.util`: the helpers its handlers import (same names, same behaviour)."""

from __future__ import annotations

import inspect
import itertools
import json
import logging
import os
from collections.abc import Iterable
from types import ModuleType
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["PredictionException", "list_classes_from_module", "load_label_mapping", "map_class_to_label"]


class PredictionException(Exception):
    """Raised by a handler to answer the whole batch with `error_code` and `message` (TorchServe's contract)."""

    def __init__(self, message: str, error_code: int = 500) -> None:
        self.message = message
        self.error_code = error_code
        super().__init__(message)

    def __str__(self) -> str:
        return f"{self.message} : {self.error_code}"


def list_classes_from_module(module: ModuleType, parent_class: type | None = None) -> list[type]:
    """The classes defined in `module` itself (not imported into it), optionally only subclasses of a parent."""
    classes = [member for _, member in inspect.getmembers(module, inspect.isclass)
               if member.__module__ == module.__name__]
    if parent_class is not None:
        return [c for c in classes if issubclass(c, parent_class)]
    return classes


def load_label_mapping(mapping_file_path: str) -> dict[str, str] | None:
    """`index_to_name.json` as {"index": "label"}; values given as lists take their last entry. None if absent."""
    if not os.path.isfile(mapping_file_path):
        logger.warning("Missing the index_to_name.json file. Inference output will not include class name.")
        return None
    with open(mapping_file_path) as f:
        mapping = json.load(f)
    if not isinstance(mapping, dict):
        raise Exception('index -> name JSON mapping should be in "class": "label" format.')
    names = mapping.get("object_type_names")
    if isinstance(names, list):  # the layout of TorchServe's older examples
        return {str(k): v for k, v in enumerate(names)}
    for key, value in mapping.items():
        label = value[-1] if isinstance(value, list) else value
        if not isinstance(label, str):
            raise Exception("labels in index->name mapping must be either str or [str]")
        mapping[key] = label
    return mapping


def map_class_to_label(probs: list[list[float]], mapping: dict[str, str] | None = None,
                       lbl_classes: Iterable[Iterable[Any]] | None = None) -> list[dict[str, float]]:
    """One {label: probability} dict per row; a class without a mapping is named by its index."""
    if not (isinstance(probs, list) and all(isinstance(pp, list) for pp in probs)):
        raise Exception("Convert classes to list before doing mapping")
    if mapping is not None and not isinstance(mapping, dict):
        raise Exception("Mapping must be a dict")
    if lbl_classes is None:
        lbl_classes = itertools.repeat(range(len(probs[0])), len(probs))
    return [{(mapping[str(c)] if mapping is not None else str(c)): p for c, p in zip(classes, row, strict=False)}
            for classes, row in zip(lbl_classes, probs, strict=False)]
