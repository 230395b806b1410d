"""Input arrays for the tools: read from `.npy` / `.npz` files, matched to a model's inputs, or made up.

A `.npy` file holds the one input of a single-input model; an `.npz` file holds arrays named as the model's inputs
(or, when none of the names match, given in the inputs' order: `np.savez(path, a, b)`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ToolError

GENERATED_BATCH = 8  # rows of a made-up input set


@dataclass(frozen=True)
class InputSpec:
    """One model input: its name, numpy type and shape (None for a dimension of any size, the batch included)."""

    name: str
    dtype: np.dtype
    shape: tuple[int | None, ...]


def read_arrays(path: Path) -> list[tuple[str, np.ndarray]]:
    """The arrays of one `.npy` (named "") or `.npz` file, in the file's order."""
    if not path.is_file():
        raise ToolError(f"{path}: no such file")
    try:
        if path.suffix == ".npy":
            return [("", np.load(path, allow_pickle=False))]
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                return [(name, archive[name]) for name in archive.files]
    except (OSError, ValueError) as exc:
        raise ToolError(f"{path}: not a numpy file ({exc})") from None
    raise ToolError(f"{path}: expected a .npy or .npz file")


def match_inputs(arrays: Sequence[tuple[str, np.ndarray]], specs: Sequence[InputSpec],
                 source: str) -> dict[str, np.ndarray]:
    """The arrays as the model's inputs: by name, else by position; each cast to the input's type."""
    by_name = dict(arrays)
    named = all(spec.name in by_name for spec in specs)
    if not named and len(arrays) != len(specs):
        raise ToolError(f"{source}: holds {len(arrays)} array(s) ({', '.join(n or '-' for n, _ in arrays)}); the "
                        f"model has {len(specs)} input(s): {', '.join(s.name for s in specs)}")
    chosen = [by_name[spec.name] for spec in specs] if named else [a for _, a in arrays]
    inputs = {}
    for spec, array in zip(specs, chosen, strict=True):
        if array.ndim != len(spec.shape) or any(d is not None and d != n for d, n in zip(spec.shape, array.shape,
                                                                                        strict=False)):
            raise ToolError(f"{source}: input '{spec.name}' has shape {list(array.shape)}; the model takes "
                            f"{[d if d is not None else -1 for d in spec.shape]}")
        inputs[spec.name] = np.ascontiguousarray(array.astype(spec.dtype, copy=False))
    return inputs


def random_inputs(specs: Sequence[InputSpec], batch: int = GENERATED_BATCH, seed: int = 0) -> dict[str, np.ndarray]:
    """Made-up inputs: the first free dimension is `batch`, any other must be fixed. Floats are standard normal,
    integers 0..9, booleans either."""
    rng = np.random.default_rng(seed)
    inputs = {}
    for spec in specs:
        shape = []
        for i, dim in enumerate(spec.shape):
            if dim is None and i > 0:
                raise ToolError(f"input '{spec.name}' has a dimension of free size past the first "
                                f"({[d if d is not None else -1 for d in spec.shape]}): give --sample-input")
            shape.append(batch if dim is None else dim)
        kind = spec.dtype.kind
        if kind == "f":
            array = rng.standard_normal(shape).astype(spec.dtype)
        elif kind in "iu":
            array = rng.integers(0, 10, shape).astype(spec.dtype)
        elif kind == "b":
            array = rng.integers(0, 2, shape).astype(bool)
        else:
            raise ToolError(f"input '{spec.name}' of type {spec.dtype} cannot be made up: give --sample-input")
        inputs[spec.name] = array
    return inputs


def max_difference(expected: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray]) -> dict[str, float]:
    """The largest absolute difference of each output present in both (NaN where shapes differ)."""
    result = {}
    for name, want in expected.items():
        if name not in got:
            continue
        have = np.asarray(got[name])
        want = np.asarray(want)
        if have.size != want.size:
            result[name] = float("nan")
            continue
        diff = np.abs(have.reshape(-1).astype(np.float64) - want.reshape(-1).astype(np.float64))
        result[name] = float(diff.max()) if diff.size else 0.0
    return result
