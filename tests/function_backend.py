"""A test backend whose behaviour each test writes in Python: what a load does and what an execution returns.

Fast unit tests run the real core (manager, pipeline, schedulers) and the real front doors' codecs on it, without
sockets or ML runtimes. A model uses it with `backend: "function"` in its config.pbtxt (see `write_model`), while
`registered()` is open; `BEHAVIOURS[model name]` says what it does:

  execute      inputs -> outputs (the default echoes nothing: a model without one must not be asked)
  load_error   an exception to raise from `load` for the versions listed in `failing_versions` (all if empty)
  load_gate    when set, `load` waits for it (and `loading` is set once a load has started), so a test can look
               at the server while a load is in progress
  exec_gate    the same for `execute` (`executing` is set once an execution started)
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from inferd.backends import BACKENDS, BackendSpec
from inferd.config import ModelConfig

NAME = "function"
GATE_TIMEOUT_S = 30.0  # a gate nobody opens must not hang the test run

Tensors = dict[str, np.ndarray]


def _no_execute(inputs: Tensors) -> Tensors:
    raise AssertionError("this test model has no execute behaviour")


@dataclass
class Behaviour:
    execute: Callable[[Tensors], Tensors] = _no_execute
    load_error: Exception | None = None
    failing_versions: tuple[int, ...] = ()
    load_gate: threading.Event | None = None
    loading: threading.Event = field(default_factory=threading.Event)
    exec_gate: threading.Event | None = None
    executing: threading.Event = field(default_factory=threading.Event)
    loads: list[int] = field(default_factory=list)  # version of every load, in order
    unloads: list[int] = field(default_factory=list)  # version of every unload, in order
    executed: list[int] = field(default_factory=list)  # version of every execution, in order


BEHAVIOURS: dict[str, Behaviour] = {}


def behaviour(model: str) -> Behaviour:
    return BEHAVIOURS.setdefault(model, Behaviour())


class FunctionBackend:
    releases_gil = True

    def __init__(self) -> None:
        self.behaviour = Behaviour()
        self.version = -1

    def autocomplete(self, config: ModelConfig, files: Path) -> ModelConfig:
        return config

    def load(self, config: ModelConfig, files: Path, device: str) -> None:
        self.behaviour = behaviour(config.name)
        self.version = int(files.name)
        self.behaviour.loading.set()
        gate = self.behaviour.load_gate
        if gate is not None and not gate.wait(GATE_TIMEOUT_S):
            raise RuntimeError("the test never opened the load gate")
        error, failing = self.behaviour.load_error, self.behaviour.failing_versions
        if error is not None and (not failing or self.version in failing):
            raise error
        self.behaviour.loads.append(self.version)

    def execute(self, inputs: Tensors) -> Tensors:
        self.behaviour.executed.append(self.version)
        self.behaviour.executing.set()
        gate = self.behaviour.exec_gate
        if gate is not None and not gate.wait(GATE_TIMEOUT_S):
            raise RuntimeError("the test never opened the execute gate")
        return self.behaviour.execute(inputs)

    def unload(self) -> None:
        self.behaviour.unloads.append(self.version)


@contextlib.contextmanager
def registered() -> Iterator[None]:
    """`backend: "function"` resolves to FunctionBackend while the context is open; behaviours are reset after."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(BACKENDS, NAME, BackendSpec(f"{__name__}:FunctionBackend", ""))
        try:
            yield
        finally:
            BEHAVIOURS.clear()


def write_model(repo: Path, name: str, config_body: str, versions: tuple[int, ...] = (1,)) -> Path:
    """A model folder served by FunctionBackend: `config_body` is the rest of its config.pbtxt."""
    folder = repo / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.pbtxt").write_text(f'name: "{name}"\nbackend: "{NAME}"\n{config_body}\n')
    for version in versions:
        (folder / str(version)).mkdir(exist_ok=True)
    return folder
