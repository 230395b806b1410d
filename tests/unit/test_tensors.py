"""Tensor codecs shared by the frontends: raw bytes (binary data, gRPC raw contents) and list data."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from inferd.frontends.tensors import check_shape, decode_list, decode_raw, encode_raw, split_bytes
from inferd.types import InferError, datatype_of
from models import DATATYPES, sample


def _lp(*items: bytes) -> bytes:
    """Length-prefixed BYTES elements as the binary extension defines them."""
    return b"".join(struct.pack("<I", len(i)) + i for i in items)


def test_bytes_are_length_prefixed_little_endian() -> None:
    array = np.array([b"ab", b"", b"xyz"], dtype=object)
    assert encode_raw(array) == b"\x02\x00\x00\x00ab\x00\x00\x00\x00\x03\x00\x00\x00xyz"


@pytest.mark.parametrize("items", [
    [b"hello", b"", b"\x00\xff\xfe binary", "é".encode(), b"x" * 70000],
    [b""],
    [],
])
def test_bytes_round_trip(items: list[bytes]) -> None:
    array = np.array(items, dtype=object).reshape(len(items))
    decoded = decode_raw("IN", "BYTES", (len(items),), encode_raw(array))
    assert decoded.dtype == np.object_
    assert decoded.shape == (len(items),)
    assert list(decoded) == items


def test_bytes_round_trip_keeps_the_shape() -> None:
    array = np.array([[b"a", b"bb"], [b"ccc", b""]], dtype=object)
    decoded = decode_raw("IN", "BYTES", (2, 2), encode_raw(array))
    assert decoded.shape == (2, 2)
    assert decoded.tolist() == array.tolist()


def test_str_elements_are_encoded_as_utf8() -> None:
    assert encode_raw(np.array(["é"], dtype=object)) == _lp("é".encode())


@pytest.mark.parametrize("data, words", [
    (b"\x05\x00", "length"),  # ends inside a 4-byte length
    (_lp(b"abc")[:-1], "past"),  # the element is shorter than its length says
    (_lp(b"abc") + b"\x01", "length"),  # trailing bytes that cannot be a length
])
def test_truncated_bytes_are_invalid(data: bytes, words: str) -> None:
    with pytest.raises(InferError) as exc:
        split_bytes("IN", data, 1)
    assert exc.value.kind.http_status == 400
    assert "IN" in exc.value.message
    assert words in exc.value.message


def test_bytes_element_count_must_match_the_shape() -> None:
    with pytest.raises(InferError) as exc:
        decode_raw("IN", "BYTES", (3,), _lp(b"a", b"b"))
    assert exc.value.kind.http_status == 400
    with pytest.raises(InferError):
        decode_raw("IN", "BYTES", (1,), _lp(b"a", b"b"))


@pytest.mark.parametrize("datatype", [d for d in DATATYPES if d != "BYTES"])
def test_numeric_round_trip(datatype: str) -> None:
    array = sample(datatype, (3, 4), seed=1)
    raw = encode_raw(array)
    assert len(raw) == array.nbytes
    decoded = decode_raw("IN", datatype, (3, 4), raw)
    assert decoded.dtype == array.dtype
    assert datatype_of(decoded) == datatype
    np.testing.assert_array_equal(decoded, array)


def test_raw_numbers_are_little_endian_even_from_big_endian_arrays() -> None:
    big = np.array([1, 256], dtype=">i4")
    assert encode_raw(big) == b"\x01\x00\x00\x00\x00\x01\x00\x00"


def test_raw_decoding_does_not_copy() -> None:
    raw = bytearray(np.arange(4, dtype=np.float32).tobytes())
    decoded = decode_raw("IN", "FP32", (4,), memoryview(raw))
    raw[0:4] = np.float32(9).tobytes()
    assert decoded[0] == 9


@pytest.mark.parametrize("size", [15, 17, 0])
def test_raw_size_must_match_the_shape(size: int) -> None:
    with pytest.raises(InferError) as exc:
        decode_raw("IN", "FP32", (4,), b"\x00" * size)
    assert exc.value.kind.http_status == 400
    assert "16" in exc.value.message


def test_unknown_datatype_is_invalid() -> None:
    with pytest.raises(InferError) as exc:
        decode_raw("IN", "FP8", (1,), b"\x00")
    assert exc.value.kind.http_status == 400
    assert "FP8" in exc.value.message


def test_list_data_flat_and_nested() -> None:
    flat = decode_list("IN", "INT32", (2, 2), [1, 2, 3, 4])
    nested = decode_list("IN", "INT32", (2, 2), [[1, 2], [3, 4]])
    for array in (flat, nested):
        assert array.dtype == np.int32
        assert array.tolist() == [[1, 2], [3, 4]]


def test_list_bytes_data() -> None:
    array = decode_list("IN", "BYTES", (2,), ["é", "b"])
    assert array.tolist() == ["é".encode(), b"b"]


@pytest.mark.parametrize("datatype, data", [
    ("INT32", [1, 2, 3]),
    ("BYTES", ["a", "b", "c"]),
    ("FP32", [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]),
])
def test_list_data_length_must_match_the_shape(datatype: str, data: list) -> None:
    with pytest.raises(InferError) as exc:
        decode_list("IN", datatype, (2, 2), data)
    assert exc.value.kind.http_status == 400


def test_list_data_of_the_wrong_kind_is_invalid() -> None:
    with pytest.raises(InferError):
        decode_list("IN", "INT32", (2,), ["a", "b"])
    with pytest.raises(InferError):
        decode_list("IN", "BYTES", (2,), [1, 2])


@pytest.mark.parametrize("shape", [[-1, 4], [1.5], "16", [True], None, [2**62, 4, 0], [1] * 65])
def test_bad_shapes_are_invalid(shape: object) -> None:
    with pytest.raises(InferError) as exc:
        check_shape("IN", shape)
    assert exc.value.kind.http_status == 400


def test_good_shapes() -> None:
    assert check_shape("IN", [1, 16]) == (1, 16)
    assert check_shape("IN", []) == ()
    assert check_shape("IN", [0]) == (0,)
