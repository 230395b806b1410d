"""Input tensors for `inferd bench`, shaped from the model's metadata.

The data is built once, before the clock starts, so that the load loop only sends it: a benchmark that generates
tensors per request measures numpy, not the server.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..types import V2_TO_NUMPY

__all__ = ["InputSpec", "TensorData", "build_input_sets", "input_specs", "parse_shapes"]

# Random integers stay in [0, 100): valid for every integer type, and small enough to be plausible indices,
# token ids or counts; random floats are uniform in [0, 1).
_RANDOM_INT_HIGH = 100
_ALPHABET = np.frombuffer(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", dtype=np.uint8)


@dataclass(frozen=True)
class InputSpec:
    """One model input as the benchmark sends it: the full request shape (batch dimension included)."""

    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class TensorData:
    """One input tensor of one request; plain numpy so it pickles to `--processes` workers.

    With `--shared-memory system` the data also lies in a registered region and requests name the region instead
    of carrying the bytes.
    """

    name: str
    datatype: str
    array: np.ndarray
    shm_region: str | None = None
    shm_byte_size: int = 0
    shm_offset: int = 0


def parse_shapes(items: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """`--shape NAME:d1,d2` (perf_analyzer's form, batch dimension excluded) into {name: dims}."""
    shapes: dict[str, tuple[int, ...]] = {}
    for item in items:
        name, sep, dims = item.rpartition(":")
        if not sep or not name:
            raise ValueError(f"--shape expects NAME:d1,d2,…, got '{item}'")
        try:
            shape = tuple(int(d) for d in dims.split(",") if d.strip())
        except ValueError:
            raise ValueError(f"--shape {item}: dimensions must be integers") from None
        if any(d < 0 for d in shape):
            raise ValueError(f"--shape {item}: dimensions must be >= 0")
        shapes[name] = shape
    return shapes


def input_specs(metadata: Mapping[str, Any], max_batch_size: int, batch_size: int,
                shapes: Mapping[str, tuple[int, ...]], variable_ok: bool = False) -> list[InputSpec]:
    """The request shape of every input: `batch_size` in front when the model batches, `--shape` for -1 dims.

    With `variable_ok` (data from a file, which may carry its own shapes) -1 dimensions may stay.

    `metadata` is the V2 model metadata as JSON (the HTTP client's form; the gRPC client's is converted with
    `as_json=True`). Its shapes include the batch dimension (-1) when `max_batch_size > 0`.
    """
    if batch_size < 1:
        raise ValueError("--batch-size must be at least 1")
    if max_batch_size == 0 and batch_size > 1:
        raise ValueError(f"model '{metadata.get('name')}' does not batch (max_batch_size 0); use --batch-size 1")
    if 0 < max_batch_size < batch_size:
        raise ValueError(f"--batch-size {batch_size} exceeds the model's max_batch_size {max_batch_size}")
    unknown = set(shapes) - {str(i["name"]) for i in metadata.get("inputs", [])}
    if unknown:
        raise ValueError(f"--shape names unknown input(s): {', '.join(sorted(unknown))}")
    specs = []
    for tensor in metadata.get("inputs", []):
        name, datatype = str(tensor["name"]), str(tensor["datatype"])
        if datatype not in V2_TO_NUMPY:
            raise ValueError(f"input '{name}' has datatype {datatype}, which the benchmark cannot generate")
        dims = [int(d) for d in tensor["shape"]]
        if max_batch_size > 0:
            dims = dims[1:]  # the batch dimension; the metadata reports it as -1
        if name in shapes:
            override = shapes[name]
            if len(override) != len(dims) or any(d not in (-1, o) for d, o in zip(dims, override, strict=True)):
                raise ValueError(f"--shape {name}:{','.join(map(str, override))} does not fit the model's shape "
                                 f"{dims}")
            dims = list(override)
        elif any(d < 0 for d in dims) and not variable_ok:
            raise ValueError(f"input '{name}' has variable dimensions {dims}; give them with --shape "
                             f"{name}:{','.join('N' if d < 0 else str(d) for d in dims)}")
        specs.append(InputSpec(name, datatype, (batch_size, *dims) if max_batch_size > 0 else tuple(dims)))
    return specs


def build_input_sets(specs: Sequence[InputSpec], source: str, batched: bool, string_length: int = 16,
                     seed: int = 0) -> list[list[TensorData]]:
    """The distinct requests the benchmark cycles through: one for `random` and `zero`, one per entry of a file.

    `source` is `random`, `zero` or the path of a perf_analyzer-style JSON data file.
    """
    if source in ("random", "zero"):
        rng = np.random.default_rng(seed)
        return [[TensorData(s.name, s.datatype, _generate(s, source == "random", rng, string_length))
                 for s in specs]]
    return _from_file(Path(source), specs, batched)


def _generate(spec: InputSpec, random: bool, rng: np.random.Generator, string_length: int) -> np.ndarray:
    dtype = V2_TO_NUMPY[spec.datatype]
    count = math.prod(spec.shape)
    if spec.datatype == "BYTES":
        if not random:
            return np.full(spec.shape, b"", dtype=np.object_)
        letters = _ALPHABET[rng.integers(0, len(_ALPHABET), (count, string_length))]
        return _object_array([row.tobytes() for row in letters]).reshape(spec.shape)
    if not random:
        return np.zeros(spec.shape, dtype=dtype)
    if spec.datatype == "BOOL":
        return rng.integers(0, 2, spec.shape).astype(np.bool_)
    if dtype.kind in "iu":
        return rng.integers(0, _RANDOM_INT_HIGH, spec.shape).astype(dtype)
    return rng.random(spec.shape, dtype=np.float64).astype(dtype)


def _object_array(items: Sequence[bytes]) -> np.ndarray:
    """A 1-D object array of bytes (np.array would try to see sequences in it)."""
    array = np.empty(len(items), dtype=np.object_)
    array[:] = items
    return array


def _from_file(path: Path, specs: Sequence[InputSpec], batched: bool) -> list[list[TensorData]]:
    """perf_analyzer's input data JSON: `{"data": [{"INPUT0": [...], "INPUT1": {"content": [...], "shape": [...]}}]}`.

    Each entry of `data` is one batch element (one request when the model does not batch); a request of batch size
    b stacks b consecutive entries, wrapping around. A value is a flat or nested list, `{"content": ..., "shape":
    ...}` (the shape without the batch dimension, for variable dimensions) or `{"b64": "..."}` (the tensor's raw
    little-endian bytes; for BYTES one element).
    """
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"--input-data: no such file '{path}' (expected random, zero or a JSON file)") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"--input-data {path}: not valid JSON ({exc})") from None
    entries = document.get("data") if isinstance(document, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"--input-data {path}: expected {{\"data\": [{{\"INPUT\": [...]}}, ...]}}")
    # perf_analyzer allows a list of streams (a list of lists of entries); a benchmark without sequences flattens it.
    flat = [e for item in entries for e in (item if isinstance(item, list) else [item])]
    elements: list[dict[str, np.ndarray]] = []
    for number, entry in enumerate(flat):
        if not isinstance(entry, dict):
            raise ValueError(f"--input-data {path}: entry {number} is not an object")
        missing = [s.name for s in specs if s.name not in entry]
        if missing:
            raise ValueError(f"--input-data {path}: entry {number} lacks input(s) {', '.join(missing)}")
        element_shapes = {s.name: s.shape[1:] if batched else s.shape for s in specs}
        elements.append({s.name: _decode_value(entry[s.name], s, element_shapes[s.name], f"{path} entry {number}")
                         for s in specs})
    batch = specs[0].shape[0] if batched and specs else 1
    sets = []
    for start in range(len(elements)):
        tensors = []
        for spec in specs:
            if batched:
                parts = [elements[(start * batch + j) % len(elements)][spec.name] for j in range(batch)]
                if len({p.shape for p in parts}) > 1:
                    raise ValueError(f"--input-data {path}: entries stacked into one batch differ in the shape of "
                                     f"'{spec.name}'")
                array = np.stack(parts)
            else:
                array = elements[start][spec.name]
            tensors.append(TensorData(spec.name, spec.datatype, array))
        sets.append(tensors)
    return sets


def _decode_value(value: Any, spec: InputSpec, shape: tuple[int, ...], where: str) -> np.ndarray:
    dtype = V2_TO_NUMPY[spec.datatype]
    if isinstance(value, dict) and "shape" in value:
        shape = tuple(int(d) for d in value["shape"])
    if isinstance(value, dict) and "b64" in value:
        raw = base64.b64decode(value["b64"])
        if spec.datatype == "BYTES":
            flat = _object_array([raw])
        else:
            if len(raw) % dtype.itemsize:
                raise ValueError(f"{where}: input '{spec.name}': {len(raw)} b64 bytes are not a whole number of "
                                 f"{spec.datatype} elements")
            flat = np.frombuffer(raw, dtype=dtype.newbyteorder("<")).astype(dtype)
    else:
        content = value.get("content") if isinstance(value, dict) else value
        if content is None:
            raise ValueError(f"{where}: input '{spec.name}' needs a list, 'content' or 'b64'")
        if spec.datatype == "BYTES":
            items = np.asarray(content, dtype=np.object_).reshape(-1).tolist()
            flat = _object_array([i if isinstance(i, bytes) else str(i).encode() for i in items])
        else:
            try:
                flat = np.asarray(content, dtype=dtype).reshape(-1)
            except (ValueError, TypeError, OverflowError) as exc:
                raise ValueError(f"{where}: input '{spec.name}' is not {spec.datatype} data: {exc}") from None
    if any(d < 0 for d in shape):
        known = math.prod(d for d in shape if d >= 0)
        if sum(d < 0 for d in shape) > 1 or known == 0 or flat.size % known:
            raise ValueError(f"{where}: input '{spec.name}' has variable dimensions {list(shape)}; give its "
                             "\"shape\" in the data file")
        shape = tuple(flat.size // known if d < 0 else d for d in shape)
    if flat.size != math.prod(shape):
        raise ValueError(f"{where}: input '{spec.name}' has {flat.size} elements, shape {list(shape)} needs "
                         f"{math.prod(shape)}")
    return flat.reshape(shape)
