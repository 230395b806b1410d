"""Tensor codecs shared by the frontends: raw little-endian bytes (binary extension, gRPC raw contents) and lists.

The raw layout lives in the core (`inferd.rawdata`, shared memory uses it too) and is re-exported here.

List data (JSON `data`, V1 values, gRPC typed contents) is strict, as Triton reads it: BOOL takes only booleans,
integer datatypes only integers within their range, float datatypes only numbers that fit (NaN and Infinity, where
the JSON carries them, stay what they are); strings, booleans or nulls in a numeric tensor are refused. The checks
are vectorised: one pass over the leaves' types (in C), numpy's conversion, and a range check on the array; the
element-by-element walk only runs to name the value that was refused.
"""

from __future__ import annotations

import array as _array
import math
import warnings
from itertools import chain
from typing import Any

import numpy as np

from ..rawdata import decode_raw, element_count, encode_raw, split_bytes
from ..types import V2_TO_NUMPY, InferError

__all__ = ["MAX_DIMS", "JsonConstant", "check_shape", "decode_list", "decode_nested", "decode_raw", "element_count",
           "encode_raw", "split_bytes"]

MAX_DIMS = 64  # numpy's limit on an array's dimensions
# The largest product of a shape's non-zero dimensions: numpy refuses a shape whose elements, at 8 bytes each,
# would not fit its index type, even when another dimension is 0.
_MAX_DIMENSION_PRODUCT = (2**63 - 1) // 8
_INT64 = np.dtype(np.int64)
# A number too large for FP32 / FP16 becomes inf in the cast, which the finiteness check below reports as the
# client's error; numpy's RuntimeWarning for it would only repeat that in the log. Filtered once here rather than
# with np.errstate on every request (a context manager costs microseconds on the hot path).
warnings.filterwarnings("ignore", message="overflow encountered in cast", category=RuntimeWarning)


class JsonConstant(float):
    """NaN, Infinity or -Infinity written as JSON's tokens (the parser's `parse_constant`): allowed in float
    tensors, unlike a number literal too large for its type, which reads as an infinity too."""


_NUMBER_TYPES = frozenset((float, int, JsonConstant))
_UINT64 = np.dtype(np.uint64)
_sum = np.add.reduce
# numpy 2 refuses a Python integer out of the target's range (OverflowError); numpy 1 wraps it with a warning.
_STRICT_INT_CAST = int(np.__version__.split(".")[0]) >= 2


def check_shape(name: str, shape: Any) -> tuple[int, ...]:
    """A client-given shape: a list of non-negative integers that numpy can hold (even as an empty tensor)."""
    if not isinstance(shape, (list, tuple)):
        raise _not_a_shape(name, shape)
    if len(shape) > MAX_DIMS:
        if not all(type(d) is int and d >= 0 for d in shape):
            raise _not_a_shape(name, shape)
        raise InferError.invalid(f"input '{name}': shape has {len(shape)} dimensions, more than the {MAX_DIMS} "
                                 "allowed")
    product = 1
    too_large = False
    for d in shape:  # one pass: the type, the sign and the product (no generator on the per-request path)
        if type(d) is not int or d < 0:
            raise _not_a_shape(name, shape)
        if d:
            product *= d
            too_large = too_large or product > _MAX_DIMENSION_PRODUCT
    if too_large:
        raise InferError.invalid(f"input '{name}': shape {_short(list(shape))} is too large")
    return tuple(shape)


def _not_a_shape(name: str, shape: Any) -> InferError:
    return InferError.invalid(f"input '{name}': shape must be a list of non-negative integers, got {_short(shape)}")


def _dtype(name: str, datatype: str) -> np.dtype[Any]:
    dtype = V2_TO_NUMPY.get(datatype)
    if dtype is None:
        raise InferError.invalid(f"input '{name}': unsupported datatype '{datatype}'")
    return dtype


def decode_list(name: str, datatype: str, shape: tuple[int, ...], data: Any, *, from_json: bool = True,
                plain: bool = False) -> np.ndarray:
    """Array from list data (JSON `data`, gRPC typed contents: `from_json` False): flat or nested (the element count
    must match the shape, as Triton checks it), values strictly of the datatype.

    `plain`: the caller knows the data holds no booleans (a JSON document without a `true` or `false` token). Flat
    number data then packs in C (`array.array`, as strict as the walk for everything but booleans); the walk below
    runs only when that refuses something, or for nested lists, and names the value it refuses.
    """
    count = element_count(shape)
    if plain:
        array = _plain_numbers(datatype, count, data)
        if array is not None:
            return array.reshape(shape)
    if datatype != "BYTES":
        _dtype(name, datatype)
    leaves, types, _ = _leaves(name, data, "data")
    if len(leaves) != count:
        raise InferError.invalid(f"input '{name}': shape {list(shape)} needs {count} elements, got {len(leaves)}")
    return _convert(name, datatype, leaves, types, "data", from_json).reshape(shape)


# The datatypes whose list data `array.array` packs in C, as strictly as the walk below except for booleans (which
# the caller rules out): a float code takes integers and floats, an integer code integers within its range; any
# other value raises. Kept only where the C type has the datatype's size on this platform.
_PACKED = {datatype: (code, V2_TO_NUMPY[datatype]) for datatype, code in (
    ("FP32", "f"), ("FP64", "d"), ("INT8", "b"), ("UINT8", "B"), ("INT16", "h"), ("UINT16", "H"), ("INT32", "i"),
    ("UINT32", "I"), ("INT64", "q"), ("UINT64", "Q")) if _array.array(code).itemsize == V2_TO_NUMPY[datatype].itemsize}


def _plain_numbers(datatype: str, count: int, data: Any) -> np.ndarray | None:
    """Flat data as an array when every value is a number the datatype takes (no booleans, the caller's word), all
    finite and `count` of them; else None, and the strict path decides and names the value it refuses."""
    packing = _PACKED.get(datatype)
    if packing is None or type(data) is not list or len(data) != count:
        return None
    code, dtype = packing
    try:
        packed = _array.array(code, data)  # TypeError for strings, nulls and lists; OverflowError out of range
    except (TypeError, OverflowError):
        return None
    array = np.frombuffer(packed, dtype)
    if dtype.kind == "f" and not math.isfinite(_sum(array)):
        return None  # NaN / Infinity tokens, or a value past the datatype: the strict path tells which
    return array


def decode_nested(name: str, datatype: str, value: Any, what: str) -> np.ndarray:
    """Array from nested lists whose nesting is the shape (V1 values): lists of one level must agree in length."""
    if datatype != "BYTES":
        _dtype(name, datatype)
    leaves, types, shape = _leaves(name, value, what)
    if shape is None:
        raise InferError.invalid(f"input '{name}': {what} cannot be read as a {datatype} tensor: lists of "
                                 "different lengths at one level")
    return _convert(name, datatype, leaves, types, what).reshape(shape)


def _leaves(name: str, data: Any, what: str) -> tuple[list[Any], set[type], tuple[int, ...] | None]:
    """The leaves of nested lists in order, their types and the shape of the nesting (None when ragged).

    Level by level with C loops (`map`, `chain`): no recursion, so no depth can exhaust the stack.
    """
    if not isinstance(data, list):
        return [data], {type(data)}, ()
    shape: list[int] | None = [len(data)]
    while True:
        types = set(map(type, data))
        if list not in types:
            return data, types, None if shape is None else tuple(shape)
        if len(types) > 1:
            raise InferError.invalid(f"input '{name}': {what} mix lists and values at one level")
        if shape is not None:
            if len(shape) >= MAX_DIMS:
                raise InferError.invalid(f"input '{name}': {what} nest lists deeper than {MAX_DIMS} levels")
            lengths = set(map(len, data))
            shape = [*shape, lengths.pop()] if len(lengths) == 1 else None
        data = list(chain.from_iterable(data))


def _convert(name: str, datatype: str, leaves: list[Any], types: set[type], what: str,
             from_json: bool = True) -> np.ndarray:
    """A 1-D array of `leaves`, refusing any value that is not exactly of the datatype."""
    if datatype == "BYTES":
        return _bytes(name, leaves, types, what)
    dtype = V2_TO_NUMPY[datatype]
    if datatype == "BOOL":
        if not types <= {bool}:
            raise _refused(name, datatype, leaves, what, (bool,), "true or false")
        return np.array(leaves, dtype=dtype)
    if dtype.kind == "f":
        return _floats(name, datatype, dtype, leaves, types, what, from_json)
    return _integers(name, datatype, dtype, leaves, types, what)


def _bytes(name: str, leaves: list[Any], types: set[type], what: str) -> np.ndarray:
    if not types <= {str, bytes}:
        bad = next(v for v in leaves if type(v) not in (str, bytes))
        raise InferError.invalid(f"input '{name}': BYTES elements must be strings, got {type(bad).__name__}")
    array = np.empty(len(leaves), dtype=object)
    if str in types:
        try:
            array[:] = [v.encode("utf-8") if type(v) is str else v for v in leaves]
        except UnicodeEncodeError:
            raise InferError.invalid(f"input '{name}': a BYTES string in the {what} is not valid Unicode (it holds "
                                     "a lone surrogate)") from None
    else:
        array[:] = leaves
    return array


def _floats(name: str, datatype: str, dtype: np.dtype[Any], leaves: list[Any], types: set[type],
            what: str, from_json: bool) -> np.ndarray:
    if not types <= _NUMBER_TYPES:
        raise _refused(name, datatype, leaves, what, (float, int), "numbers")
    try:
        array = np.array(leaves, dtype=dtype)  # an overflow becomes inf (its warning is filtered, see above)
    except OverflowError:  # an integer beyond any float
        raise _out_of_range(name, datatype, leaves, what) from None
    # One reduction in C (a sum is finite only when every element is); `isfinite(...).all()` costs twice as much.
    # A sum of finite values that overflows only sends the request through the element-wise check below.
    if not math.isfinite(_sum(array)):
        # NaN and Infinity given as such stay (JSON's tokens; binary floats); a number that became infinite did
        # not fit: in the datatype, or already in FP64 when parsed from JSON (a literal such as 1e400 reads as inf).
        for index in np.flatnonzero(~np.isfinite(array)):
            leaf = leaves[index]
            if type(leaf) is not JsonConstant and (from_json or math.isfinite(leaf)):
                raise _out_of_range(name, datatype, leaves, what, int(index))
    return array


def _integers(name: str, datatype: str, dtype: np.dtype[Any], leaves: list[Any], types: set[type],
              what: str) -> np.ndarray:
    if not types <= {int}:
        index, value = next((i, v) for i, v in enumerate(leaves) if type(v) is not int)
        if type(value) is float and value.is_integer() and abs(value) >= 2**63:
            # orjson reads an integer literal past 64 bits as a float: an integer, out of range
            raise _out_of_range(name, datatype, leaves, what, index)
        raise _refused(name, datatype, leaves, what, (int,), "integers")
    if _STRICT_INT_CAST:
        try:
            return np.array(leaves, dtype=dtype)
        except OverflowError:
            raise _out_of_range(name, datatype, leaves, what) from None
    info = np.iinfo(dtype)
    try:
        wide = np.array(leaves, dtype=_INT64)
    except OverflowError:  # beyond INT64: only UINT64 takes such numbers
        if dtype == _UINT64 and min(leaves) >= 0 and max(leaves) <= info.max:
            return np.array(leaves, dtype=_UINT64)
        raise _out_of_range(name, datatype, leaves, what) from None
    if wide.size and (wide.min() < info.min or wide.max() > info.max):
        raise _out_of_range(name, datatype, leaves, what)
    return wide if dtype == _INT64 else wide.astype(dtype)


def _refused(name: str, datatype: str, leaves: list[Any], what: str, accepted: tuple[type, ...],
             words: str) -> InferError:
    """The error naming the first value whose type the datatype does not take (the only per-element walk)."""
    index, value = next((i, v) for i, v in enumerate(leaves) if type(v) not in accepted)
    return InferError.invalid(f"input '{name}': {datatype} {what} must be {words}, got {_describe(value)} "
                              f"(element {index})")


def _out_of_range(name: str, datatype: str, leaves: list[Any], what: str, index: int | None = None) -> InferError:
    if index is None:
        dtype = V2_TO_NUMPY[datatype]
        if dtype.kind == "f":
            limit = float(np.finfo(dtype).max)
            index = next((i for i, v in enumerate(leaves) if _finite_beyond(v, limit)), 0)
        else:
            info = np.iinfo(dtype)
            index = next((i for i, v in enumerate(leaves) if not info.min <= v <= info.max), 0)
    return InferError.invalid(f"input '{name}': {datatype} {what} value {_short(leaves[index])} (element {index}) "
                              f"is out of the range of {datatype}")


def _finite_beyond(value: Any, limit: float) -> bool:
    try:
        number = float(value)
    except OverflowError:
        return True
    return number == number and abs(number) != float("inf") and abs(number) > limit


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if type(value) is bool:
        return "true" if value else "false"
    return f"{type(value).__name__} {_short(value)}"


def _short(value: Any) -> str:
    try:
        text = repr(value)
    except (RecursionError, ValueError):  # lists nested past the stack, integers past str()'s digit limit
        return f"a {type(value).__name__}"
    return text if len(text) <= 64 else text[:64] + "…"
