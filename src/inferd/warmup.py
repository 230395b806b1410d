"""Triton's `model_warmup`: samples run on every instance of a loaded version before it is READY, so the first real
request does not pay for lazy initialisation (memory arenas, kernel choice, JIT).

As in Triton: a sample with `batch_size: 0` is skipped; each sample runs `count` times (at least once) on each
instance, as one execution of `batch_size` rows (one request per row); its inputs are `zero_data`, `random_data`
(BYTES: empty strings, as Triton) or `input_data_file`, the raw bytes of a file in the model folder's `warmup/`
(row-major; BYTES as Triton's serialised strings: a 4-byte little-endian length before each). The runs count in the
version's statistics like requests (executions, inferences, successes). A sample that fails makes the version
UNAVAILABLE with `failed to run warmup sample '<name>': <why>`.
"""

from __future__ import annotations

import logging
import queue
import time
from pathlib import Path
from typing import Any

import numpy as np

from .config import ConfigError, v2_datatype
from .model import ServedModel
from .scheduling import InstancePool, Job
from .types import InferenceRequest, InferError, Tensors, numpy_dtype

log = logging.getLogger("inferd.warmup")

WARMUP_FOLDER = "warmup"


class WarmupError(ConfigError):
    """A warm-up sample that cannot be built or that failed: the version is UNAVAILABLE with this reason."""


def warm_up(served: ServedModel, model_dir: Path | None) -> None:
    """Run the version's warm-up samples on each of its instances; raise WarmupError when one fails."""
    settings = [s for s in served.config.model_warmup if s.batch_size > 0]
    if not settings:
        return
    pool = getattr(served.scheduler, "pool", None)
    if not isinstance(pool, InstancePool):  # an ensemble runs its steps' models, which warm up themselves
        log.warning("model '%s': model_warmup is ignored: only models with instances warm up", served.name)
        return
    samples = [(s.name, max(int(s.count), 1), _jobs(served, s, model_dir)) for s in settings]
    started = time.perf_counter()
    held = _take_all(pool)  # not READY yet, so every instance is idle: each runs the samples in turn
    try:
        for instance in held:
            for name, count, jobs in samples:
                for _ in range(count):
                    for feeds, rows in jobs:
                        _run(served, pool, instance, name, feeds, rows)
    finally:
        for instance in held:
            pool.idle.put(instance)
    log.info("model '%s' version %d warmed up (%d sample(s) on %d instance(s), %.0f ms)", served.name,
             served.version, len(samples), len(held), (time.perf_counter() - started) * 1000)


def _take_all(pool: InstancePool) -> list[Any]:
    held = []
    for _ in pool.instances:
        try:
            held.append(pool.idle.get(timeout=30))
        except queue.Empty:
            break
    return held


def _run(served: ServedModel, pool: InstancePool, instance: Any, name: str, feeds: Tensors, rows: int) -> None:
    start = time.perf_counter_ns()
    result = pool.execute(instance, [Job(feeds, rows)])[0]  # counts the execution in the statistics
    pool.idle.get_nowait()  # execute gave the instance back; the warm-up holds it until it is done
    if isinstance(result, BaseException):
        why = result.message if isinstance(result, InferError) else str(result)
        raise WarmupError(f"failed to run warmup sample '{name}': {' '.join(why.split())}")
    duration = time.perf_counter_ns() - start
    stats = served.stats
    for _ in range(rows):  # one request per row, as Triton's warm-up sends them
        stats.enter()
        stats.record_request(duration)


def _jobs(served: ServedModel, setting: Any, model_dir: Path | None) -> list[tuple[Tensors, int]]:
    """The sample's executions: one of `batch_size` rows for a model that batches, else `batch_size` of one."""
    batching = served.max_batch_size > 0
    batch = int(setting.batch_size)
    if batching and batch > served.max_batch_size:
        raise WarmupError(f"warmup sample '{setting.name}': batch_size {batch} exceeds the model's max_batch_size "
                          f"{served.max_batch_size}")
    rows = batch if batching else 1
    inputs: dict[str, np.ndarray] = {}
    datatypes: dict[str, str] = {}
    for input_name, spec in setting.inputs.items():
        datatype = v2_datatype(spec.data_type)
        dims = [int(d) for d in spec.dims]
        if any(d < 0 for d in dims):
            raise WarmupError(f"warmup sample '{setting.name}': warmup setting expects all variable-size dimensions "
                              f"are specified for input '{input_name}'")
        one = _data(setting.name, input_name, spec, datatype, dims, model_dir)
        inputs[input_name] = np.concatenate([one[np.newaxis]] * rows) if batching else one
        datatypes[input_name] = datatype
    try:
        feeds, checked_rows = served.check_inputs(InferenceRequest(served.name, inputs, datatypes))
    except InferError as exc:  # the words a client would get for the same request
        raise WarmupError(f"warmup sample '{setting.name}': {exc.message}") from None
    return [(feeds, checked_rows)] * (1 if batching else batch)


def _data(sample: str, name: str, spec: Any, datatype: str, dims: list[int], model_dir: Path | None) -> np.ndarray:
    """One row of an input: zeros, random values, or the bytes of its file."""
    kind = spec.WhichOneof("input_data_type")
    count = int(np.prod(dims)) if dims else 1
    if kind is None:
        raise WarmupError(f"warmup sample '{sample}': input '{name}' needs zero_data, random_data or "
                          "input_data_file")
    if datatype == "BYTES":
        if kind == "input_data_file":
            return _strings(sample, name, _file(sample, name, spec.input_data_file, model_dir), count, dims)
        return np.full(dims, b"", dtype=np.object_)
    if datatype == "INVALID":
        raise WarmupError(f"warmup sample '{sample}': input '{name}' needs a data_type")
    dtype = numpy_dtype(datatype)
    if kind == "zero_data":
        return np.zeros(dims, dtype=dtype)
    if kind == "random_data":
        return _random(dtype, dims)
    data = _file(sample, name, spec.input_data_file, model_dir)
    need = count * dtype.itemsize
    if len(data) < need:
        raise WarmupError(f"warmup sample '{sample}': input '{name}' needs {need} bytes, but "
                          f"{WARMUP_FOLDER}/{spec.input_data_file} only has {len(data)} bytes")
    return np.frombuffer(data[:need], dtype=dtype).reshape(dims)


def _random(dtype: np.dtype[Any], dims: list[int]) -> np.ndarray:
    """Random values a model can take: the integer type's whole range, floats in [0, 1), bools 0 / 1 (Triton
    writes random bytes, which as floats can be NaN or infinite)."""
    rng = np.random.default_rng()
    if dtype == np.bool_:
        return rng.integers(0, 2, dims).astype(np.bool_)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, dims, dtype=dtype, endpoint=True)
    return rng.random(dims).astype(dtype)


def _file(sample: str, name: str, filename: str, model_dir: Path | None) -> bytes:
    if model_dir is None:
        raise WarmupError(f"warmup sample '{sample}': input '{name}': this model has no folder to read "
                          f"{WARMUP_FOLDER}/{filename} from")
    folder = (model_dir / WARMUP_FOLDER).resolve()
    path = (folder / filename).resolve()
    if not path.is_relative_to(folder):
        raise WarmupError(f"warmup sample '{sample}': input '{name}': input_data_file '{filename}' is outside the "
                          f"model's {WARMUP_FOLDER}/ folder")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise WarmupError(f"warmup sample '{sample}': input '{name}': cannot read {WARMUP_FOLDER}/{filename}: "
                          f"{exc.strerror or exc}") from None


def _strings(sample: str, name: str, data: bytes, count: int, dims: list[int]) -> np.ndarray:
    """Triton's serialised BYTES tensor: `count` elements, each a 4-byte little-endian length and its bytes."""
    values: list[bytes] = []
    offset = 0
    while len(values) < count:
        if offset + 4 > len(data):
            raise WarmupError(f"warmup sample '{sample}': input '{name}': the file holds {len(values)} of the "
                              f"{count} strings it needs")
        size = int.from_bytes(data[offset:offset + 4], "little")
        offset += 4
        if offset + size > len(data):
            raise WarmupError(f"warmup sample '{sample}': input '{name}': string {len(values)} is cut short")
        values.append(data[offset:offset + size])
        offset += size
    array = np.empty(count, dtype=np.object_)
    array[:] = values
    return array.reshape(dims)
