"""A test backend that records every execution, so tests can see what the scheduler did.

Registered in `inferd.backends.BACKENDS` in-process (see `registered`) and served through the in-process
`inferd.Server` SDK. A model uses it with `backend: "recording"` in its config.pbtxt; its outputs are
OUTPUT0 = 2 * INPUT0 and OUTPUT1 = INPUT0 + 1, so each caller can check it got its own rows.

Config parameters:
  sleep_ms   how long each execution "works" (time.sleep, which releases the GIL);
  gated      "1": every execution first waits until the test opens the model's gate.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from inferd.backends import BACKENDS, BackendSpec
from inferd.config import ModelConfig

NAME = "recording"
FILENAME = "model.rec"
GATE_TIMEOUT_S = 30.0  # a gate nobody opens must not hang the test run


@dataclass
class Execution:
    """One call of `execute`: on which thread, when, and the first INPUT0 value of every row (row tags)."""

    thread: str
    start: float
    end: float
    tags: list[float]
    shape: tuple[int, ...]

    def overlaps(self, other: Execution) -> bool:
        return self.start < other.end and other.start < self.end


@dataclass
class Recorder:
    """What one model's instances did; shared by all its instances."""

    executions: list[Execution] = field(default_factory=list)
    gate: threading.Event = field(default_factory=threading.Event)
    started: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(0))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def wait_started(self, timeout: float = GATE_TIMEOUT_S) -> bool:
        """Wait until one more execution has started (counted across calls)."""
        return self.started.acquire(timeout=timeout)


RECORDERS: dict[str, Recorder] = {}


def recorder(model: str) -> Recorder:
    return RECORDERS.setdefault(model, Recorder())


def _parameter(config: ModelConfig, key: str, default: str) -> str:
    if key in config.parameters:
        return config.parameters[key].string_value
    return default


class RecordingBackend:
    releases_gil = True

    def __init__(self) -> None:
        self.recorder = Recorder()
        self.sleep_s = 0.0
        self.gated = False

    def autocomplete(self, config: ModelConfig, files: Path) -> ModelConfig:
        return config

    def load(self, config: ModelConfig, files: Path, device: str) -> None:
        self.recorder = recorder(config.name)
        self.sleep_s = float(_parameter(config, "sleep_ms", "0")) / 1000
        self.gated = _parameter(config, "gated", "0") == "1"

    def execute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        start = time.perf_counter()
        self.recorder.started.release()
        x = inputs["INPUT0"]
        if self.gated and not self.recorder.gate.wait(GATE_TIMEOUT_S):
            raise RuntimeError("the test never opened the gate")
        if self.sleep_s:
            time.sleep(self.sleep_s)
        outputs = {"OUTPUT0": x * 2, "OUTPUT1": x + 1}
        tags = [float(row.flat[0]) for row in x] if x.ndim > 0 and x.size else []
        execution = Execution(threading.current_thread().name, start, time.perf_counter(), tags, x.shape)
        with self.recorder.lock:
            self.recorder.executions.append(execution)
        return outputs

    def unload(self) -> None:
        pass


@contextlib.contextmanager
def registered() -> Iterator[None]:
    """`backend: "recording"` resolves to RecordingBackend while the context is open."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(BACKENDS, NAME, BackendSpec(f"{__name__}:RecordingBackend", FILENAME))
        yield


def write_recording_model(repo: Path, name: str, *, max_batch_size: int = 8, dims: int = 4,
                          dynamic_batching: str | None = "", instances: int = 1, sleep_ms: float = 0,
                          gated: bool = False) -> Path:
    """A model served by RecordingBackend: FP32 [dims] INPUT0 -> OUTPUT0, OUTPUT1 (see the module docstring)."""
    batching = "" if dynamic_batching is None else f"dynamic_batching {{ {dynamic_batching} }}"
    config = f"""
name: "{name}"
backend: "{NAME}"
max_batch_size: {max_batch_size}
input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ {dims} ] }} ]
output [
  {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ {dims} ] }},
  {{ name: "OUTPUT1" data_type: TYPE_FP32 dims: [ {dims} ] }}
]
instance_group [ {{ count: {instances} kind: KIND_CPU }} ]
parameters [
  {{ key: "sleep_ms" value {{ string_value: "{sleep_ms}" }} }},
  {{ key: "gated" value {{ string_value: "{1 if gated else 0}" }} }}
]
{batching}
"""
    model_dir = repo / name
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    (model_dir / "config.pbtxt").write_text(config)
    (model_dir / "1" / FILENAME).write_bytes(b"")
    RECORDERS.pop(name, None)  # a fresh record for a fresh model
    return model_dir
