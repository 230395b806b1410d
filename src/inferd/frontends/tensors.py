"""Tensor codecs shared by the frontends: raw little-endian bytes (binary extension, gRPC raw contents) and lists.

The raw layout lives in the core (`inferd.rawdata`, shared memory uses it too) and is re-exported here.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..rawdata import decode_raw, element_count, encode_raw, split_bytes
from ..types import V2_TO_NUMPY, InferError

__all__ = ["check_shape", "decode_list", "decode_raw", "element_count", "encode_raw", "split_bytes"]


def check_shape(name: str, shape: Any) -> tuple[int, ...]:
    """A client-given shape: a list of non-negative integers."""
    if not isinstance(shape, (list, tuple)) or not all(type(d) is int and d >= 0 for d in shape):
        raise InferError.invalid(f"input '{name}': shape must be a list of non-negative integers, got {shape!r}")
    return tuple(shape)


def _dtype(name: str, datatype: str) -> np.dtype[Any]:
    dtype = V2_TO_NUMPY.get(datatype)
    if dtype is None:
        raise InferError.invalid(f"input '{name}': unsupported datatype '{datatype}'")
    return dtype


def decode_list(name: str, datatype: str, shape: tuple[int, ...], data: Any) -> np.ndarray:
    """Array from list data (JSON `data`, gRPC typed contents): flat or nested, checked against the shape."""
    count = element_count(shape)
    if datatype == "BYTES":
        flat = _flatten(data)
        if len(flat) != count:
            raise InferError.invalid(f"input '{name}': shape {list(shape)} needs {count} elements, got {len(flat)}")
        items = []
        for item in flat:
            if isinstance(item, str):
                items.append(item.encode("utf-8"))
            elif isinstance(item, (bytes, bytearray)):
                items.append(bytes(item))
            else:
                raise InferError.invalid(f"input '{name}': BYTES elements must be strings, got {type(item).__name__}")
        return np.array(items, dtype=object).reshape(shape)
    dtype = _dtype(name, datatype)
    try:
        array = np.asarray(data, dtype=dtype)
    except (ValueError, TypeError, OverflowError) as exc:
        raise InferError.invalid(f"input '{name}': data cannot be read as {datatype}: {exc}") from None
    if array.size != count:
        raise InferError.invalid(f"input '{name}': shape {list(shape)} needs {count} elements, got {array.size}")
    return array.reshape(shape)


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    if not data or not isinstance(data[0], list):
        return data
    flat: list[Any] = []
    for item in data:
        flat.extend(_flatten(item))
    return flat
