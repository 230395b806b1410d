"""Request limits: how many inputs a request may name and how many elements one tensor may hold.

Frontends check them on the declared shapes before they decode any tensor data, so an oversized request is
refused before it costs memory; the core checks them again for requests built in-process (the SDK).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .types import InferError

__all__ = ["DEFAULT_LIMITS", "DEFAULT_MAX_INPUTS", "DEFAULT_MAX_TENSOR_ELEMENTS", "RequestLimits"]

# Large enough for any real model (a 1 Gi-element tensor is 4 GiB of FP32), small enough to refuse absurd shapes.
DEFAULT_MAX_TENSOR_ELEMENTS = 1 << 30
DEFAULT_MAX_INPUTS = 1024


@dataclass(frozen=True, slots=True)
class RequestLimits:
    max_tensor_elements: int = DEFAULT_MAX_TENSOR_ELEMENTS
    max_inputs: int = DEFAULT_MAX_INPUTS

    def __post_init__(self) -> None:
        if self.max_tensor_elements < 1:
            raise ValueError(f"max_tensor_elements must be at least 1, got {self.max_tensor_elements}")
        if self.max_inputs < 1:
            raise ValueError(f"max_inputs must be at least 1, got {self.max_inputs}")

    def check_input_count(self, count: int) -> None:
        if count > self.max_inputs:
            raise InferError.invalid(f"the request has {count} inputs, more than the limit of {self.max_inputs} "
                                     "(--max-inputs)")

    def check_elements(self, name: str, shape: Sequence[int]) -> None:
        """INVALID_ARGUMENT when a tensor of `shape` would hold more elements than allowed."""
        if 0 in shape:
            return
        count = 1
        for d in shape:
            count *= d
            if count > self.max_tensor_elements:  # stop early: a hostile shape may multiply to a huge number
                raise InferError.invalid(f"input '{name}' has shape {_fmt(shape)}, more elements than the limit of "
                                         f"{self.max_tensor_elements} (--max-tensor-elements)")

    def check_count(self, name: str, count: int) -> None:
        """As `check_elements`, for a tensor whose element count is known."""
        if count > self.max_tensor_elements:
            raise InferError.invalid(f"input '{name}' has {count} elements, more than the limit of "
                                     f"{self.max_tensor_elements} (--max-tensor-elements)")


def _fmt(shape: Sequence[int]) -> str:
    text = "[" + ",".join(str(d) for d in shape[:16]) + (",…]" if len(shape) > 16 else "]")
    return text if len(text) < 200 else text[:200] + "…]"


DEFAULT_LIMITS = RequestLimits()
