"""A GIL-bound test backend (`releases_gil = False`): plain Python that the server runs in instance processes.

Registered in `inferd.backends.BACKENDS` in-process (see `registered`); the instance processes import this module
by its registry target. They find it because an instance process starts with the server's `sys.path`, where pytest
put tests/ (and `registered` also puts tests/ on PYTHONPATH, for anything the child itself starts).

Outputs for FP32 INPUT0 [n, w]: OUTPUT0 = 2 * INPUT0, and per row: PID (the executing process), START / END
(wall-clock seconds around the execution), ROWS (rows in the executed batch), ZEROCOPY (INPUT0 arrived as a view of
shared memory, not a copy). A BYTES input TEXT [n, 1] gives TEXT_OUT = TEXT upper-cased.

Magic first values of a row of INPUT0: -1 raises ValueError, -2 raises InferError (invalid argument), 13 ends the
process with `os._exit(13)`, 99 writes `hang-<pid>` into the marker folder and waits (up to a minute) to be killed.

Config parameters:
  busy_ms     each execution busy-loops this long in pure Python (it holds the GIL all the time);
  marker_dir  every load writes `load-<model>-<pid>` there, so a test sees which process loaded which model;
  fail_load   "1": load raises, as a broken model would.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from inferd.backends import BACKENDS, BackendSpec
from inferd.config import ModelConfig
from inferd.types import InferError

NAME = "gilbound"
FILENAME = "model.gil"
HANG_LIMIT_S = 60.0
TESTS_DIR = Path(__file__).resolve().parent


def _parameter(config: ModelConfig, key: str, default: str) -> str:
    if key in config.parameters:
        return config.parameters[key].string_value
    return default


def _shared(array: np.ndarray) -> bool:
    """The array is a view of a memory-mapped (shared memory) buffer."""
    base = array.base
    while isinstance(base, np.ndarray):
        base = base.base
    if isinstance(base, memoryview):
        base = base.obj
    return isinstance(base, mmap.mmap)


class GilBackend:
    releases_gil = False

    def __init__(self) -> None:
        self.busy_s = 0.0
        self.marker_dir: Path | None = None

    def autocomplete(self, config: ModelConfig, files: Path) -> ModelConfig:
        return config

    def load(self, config: ModelConfig, files: Path, device: str) -> None:
        if not (files / FILENAME).exists():
            raise FileNotFoundError(f"{files / FILENAME} not found")
        if _parameter(config, "fail_load", "0") == "1":
            raise RuntimeError("this model refuses to load")
        self.busy_s = float(_parameter(config, "busy_ms", "0")) / 1000
        marker_dir = _parameter(config, "marker_dir", "")
        if marker_dir:
            self.marker_dir = Path(marker_dir)
            (self.marker_dir / f"load-{config.name}-{os.getpid()}").touch()

    def execute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        start = time.time()
        if "TEXT" in inputs:
            text = inputs["TEXT"]
            return {"TEXT_OUT": np.array([bytes(v).upper() for v in text.flat], dtype=object).reshape(text.shape)}
        x = inputs["INPUT0"]
        firsts = {float(row.flat[0]) for row in x if row.size}
        if -1 in firsts:
            raise ValueError("negative input -1 is not allowed")
        if -2 in firsts:
            raise InferError.invalid("input -2 is invalid for this model")
        if 13 in firsts:
            os._exit(13)
        if 99 in firsts:
            if self.marker_dir is not None:
                (self.marker_dir / f"hang-{os.getpid()}").touch()
            deadline = time.monotonic() + HANG_LIMIT_S
            while time.monotonic() < deadline:
                time.sleep(0.01)
        if self.busy_s:
            deadline = time.perf_counter() + self.busy_s
            spins = 0
            while time.perf_counter() < deadline:  # pure Python: holds the GIL throughout
                spins += 1
        rows = x.shape[0]
        column = (rows, 1)
        return {
            "OUTPUT0": x * 2,
            "PID": np.full(column, os.getpid(), dtype=np.int64),
            "START": np.full(column, start, dtype=np.float64),
            "END": np.full(column, time.time(), dtype=np.float64),
            "ROWS": np.full(column, rows, dtype=np.int64),
            "ZEROCOPY": np.full(column, _shared(x), dtype=np.bool_),
        }

    def unload(self) -> None:
        pass


@contextlib.contextmanager
def registered() -> Iterator[None]:
    """`backend: "gilbound"` resolves to GilBackend while the context is open."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(BACKENDS, NAME, BackendSpec(f"{__name__}:GilBackend", FILENAME))
        path = os.environ.get("PYTHONPATH", "")
        patch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(TESTS_DIR), path) if p))
        yield


def write_gil_model(repo: Path, name: str, marker_dir: Path, *, instances: int = 1, busy_ms: float = 0,
                    dynamic_batching: bool = False, width: int = 4, fail_load: bool = False) -> Path:
    """A model served by GilBackend: FP32 [width] INPUT0 (width -1: any) -> the outputs in the module docstring."""
    batching = "dynamic_batching { }" if dynamic_batching else ""
    config = f"""
name: "{name}"
backend: "{NAME}"
max_batch_size: 8
input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ {width} ] }} ]
output [
  {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ {width} ] }},
  {{ name: "PID" data_type: TYPE_INT64 dims: [ 1 ] }},
  {{ name: "START" data_type: TYPE_FP64 dims: [ 1 ] }},
  {{ name: "END" data_type: TYPE_FP64 dims: [ 1 ] }},
  {{ name: "ROWS" data_type: TYPE_INT64 dims: [ 1 ] }},
  {{ name: "ZEROCOPY" data_type: TYPE_BOOL dims: [ 1 ] }}
]
instance_group [ {{ count: {instances} kind: KIND_CPU }} ]
parameters [
  {{ key: "busy_ms" value {{ string_value: "{busy_ms}" }} }},
  {{ key: "marker_dir" value {{ string_value: "{marker_dir}" }} }},
  {{ key: "fail_load" value {{ string_value: "{1 if fail_load else 0}" }} }}
]
{batching}
"""
    return _write(repo, name, config)


def write_gil_text_model(repo: Path, name: str) -> Path:
    """A GilBackend model of BYTES tensors: TEXT [1] -> TEXT_OUT [1], upper-cased."""
    config = f"""
name: "{name}"
backend: "{NAME}"
max_batch_size: 8
input [ {{ name: "TEXT" data_type: TYPE_STRING dims: [ 1 ] }} ]
output [ {{ name: "TEXT_OUT" data_type: TYPE_STRING dims: [ 1 ] }} ]
"""
    return _write(repo, name, config)


def _write(repo: Path, name: str, config: str) -> Path:
    model_dir = repo / name
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    (model_dir / "config.pbtxt").write_text(config)
    (model_dir / "1" / FILENAME).write_bytes(b"")
    return model_dir
