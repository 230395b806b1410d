"""Raw tensor bytes ⇄ numpy arrays: the one layout that binary HTTP data, gRPC raw contents and shared memory share.

Numeric data is little-endian and becomes an array with `np.frombuffer` (no copy). BYTES elements are each a 4-byte
little-endian length followed by the bytes, as Triton's binary tensor data extension and gRPC raw contents define
them.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

from .types import V2_TO_NUMPY, InferError

__all__ = ["decode_raw", "element_count", "encode_raw", "split_bytes"]

_LENGTH = struct.Struct("<I")


def element_count(shape: Sequence[int]) -> int:
    count = 1
    for d in shape:
        count *= d
    return count


def _dtype(name: str, datatype: str) -> np.dtype[Any]:
    dtype = V2_TO_NUMPY.get(datatype)
    if dtype is None:
        raise InferError.invalid(f"input '{name}': unsupported datatype '{datatype}'")
    return dtype


def decode_raw(name: str, datatype: str, shape: tuple[int, ...], buf: bytes | memoryview) -> np.ndarray:
    """Array view over raw tensor bytes (BYTES: a new object array of the elements)."""
    count = element_count(shape)
    if datatype == "BYTES":
        return np.array(split_bytes(name, buf, count), dtype=object).reshape(shape)
    dtype = _dtype(name, datatype)
    if len(buf) != count * dtype.itemsize:
        raise InferError.invalid(
            f"input '{name}': unexpected total byte size {len(buf)} for shape {list(shape)} of {datatype}, "
            f"expecting {count * dtype.itemsize}")
    return np.frombuffer(buf, dtype=dtype).reshape(shape)


def split_bytes(name: str, buf: bytes | memoryview, count: int) -> list[bytes]:
    view = memoryview(buf)
    items: list[bytes] = []
    offset, end = 0, len(view)
    while offset < end:
        if offset + 4 > end:
            raise InferError.invalid(f"input '{name}': BYTES data ends inside an element's 4-byte length")
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += 4
        if offset + length > end:
            raise InferError.invalid(f"input '{name}': BYTES element of {length} bytes runs past the data")
        items.append(bytes(view[offset:offset + length]))
        offset += length
    if len(items) != count:
        raise InferError.invalid(f"input '{name}': expected {count} BYTES elements for its shape, got {len(items)}")
    return items


def encode_raw(array: np.ndarray) -> bytes:
    """Raw little-endian bytes of an array (BYTES: length-prefixed elements)."""
    if array.dtype == np.object_ or array.dtype.kind in "SU":
        parts = []
        for item in array.flat:
            data = item.encode("utf-8") if isinstance(item, str) else bytes(item)
            parts.append(_LENGTH.pack(len(data)))
            parts.append(data)
        return b"".join(parts)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    return np.ascontiguousarray(array).tobytes()

