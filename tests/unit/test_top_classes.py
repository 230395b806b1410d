"""Top-k classes (Triton's classification extension) as pure logic: order, ties, formats, shapes, errors."""

from __future__ import annotations

import numpy as np
import pytest

from inferd.classification import class_count, top_classes
from inferd.types import InferError


def _strings(result: np.ndarray) -> list[object]:
    return result.tolist()


def test_floats_are_written_as_triton_writes_them() -> None:
    scores = np.array([[0.1, 0.7, 0.2]], dtype=np.float32)
    assert _strings(top_classes("o", scores, 2, True, ["a", "b", "c"])) == [[b"0.700000:1:b", b"0.200000:2:c"]]
    assert _strings(top_classes("o", scores.astype(np.float64), 1, True)) == [[b"0.700000:1"]]
    assert _strings(top_classes("o", scores.astype(np.float16), 1, True)) == [[b"0.700195:1"]]


def test_integers_and_the_documented_example() -> None:
    assert _strings(top_classes("o", np.array([1, 5, 10, 4], np.uint8), 2, False)) == [b"10:2", b"5:1"]
    assert _strings(top_classes("o", np.array([-3, -1], np.int64), 2, False)) == [b"-1:1", b"-3:0"]


def test_ties_keep_the_lower_index_first() -> None:
    assert _strings(top_classes("o", np.array([[5, 5, 1, 5]], np.int32), 3, True)) == [[b"5:0", b"5:1", b"5:3"]]


def test_shapes() -> None:
    batch = np.arange(24, dtype=np.float32).reshape(2, 3, 4)  # rows are flattened: 12 classes each
    assert top_classes("o", batch, 2, True).shape == (2, 2)
    assert top_classes("o", batch, 2, False).shape == (2,)  # no batching: the whole tensor is one row
    assert top_classes("o", batch, 50, True).shape == (2, 12)  # k capped at the classes


def test_labels_shorter_than_the_classes() -> None:
    assert _strings(top_classes("o", np.array([1.0, 2.0]), 2, False, ["only"])) == [b"2.000000:1", b"1.000000:0:only"]


@pytest.mark.parametrize("values", [np.array([True, False]), np.array([b"x"], dtype=object)])
def test_unsupported_types(values: np.ndarray) -> None:
    with pytest.raises(InferError, match="class result not available for output 'o' due to unsupported type"):
        top_classes("o", values, 1, False)


@pytest.mark.parametrize(("params", "expected"), [({}, 0), ({"classification": 0}, 0), ({"classification": 3}, 3)])
def test_class_count(params: dict[str, object], expected: int) -> None:
    assert class_count("o", params) == expected


@pytest.mark.parametrize("value", [-1, 1.0, "2", True])
def test_bad_class_count(value: object) -> None:
    with pytest.raises(InferError, match="non-negative integer"):
        class_count("o", {"classification": value})
