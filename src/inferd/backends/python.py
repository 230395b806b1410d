"""Python models (`backend: "python"`): a `model.py` in the version folder, run in an instance process of its own.

Two kinds of `model.py` are served:

* inferd's own API (see `_python_api`): a class with `predict(inputs: dict[str, np.ndarray]) -> dict[str,
  np.ndarray]` and optional `load`, `preprocess`, `postprocess` (sync or async).
* Triton's python backend (see `inferd.compat.triton_python`): `TritonPythonModel` with `initialize(args)`,
  `execute(requests)`, `finalize()`, using the `triton_python_backend_utils` module inferd provides.

The class served is the one named by the config parameter `class`, else `TritonPythonModel`, else the one class
of model.py with a `predict` method. The model's I/O comes from config.pbtxt or, with none there, from class
attributes `inputs` / `outputs` (lists of `{"name", "data_type" | "datatype", "dims" | "shape"}`) and
`max_batch_size`, written as plain literals: they are read from the source, so that the server process never runs
model code. A Triton class that defines the static method `auto_complete_config` has it called in a short-lived
process of its own (see `inferd.compat.triton_autocomplete`), with the model's environment when it has one. Outputs are
converted to the data type the config declares (str and bytes for TYPE_STRING).

`releases_gil = False`: the server runs each instance in a child process (instances/process.py) and this class is
what runs there. An exception from the model fails that call: HTTP 500 (the model failed, not necessarily the
request), unless it raised `inferd.InferError` (its kind) or a `TritonError`, or (Triton API) answered with an
error response: those are 400 unless their code says otherwise. A process that dies is restarted by the instance.
"""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..compat import triton_autocomplete
from ..config import ConfigError, DataType, ModelConfig
from ..model_import import import_model
from ..types import CONFIG_TO_V2, V2_TO_NUMPY, InferError
from . import _python_source as source

log = logging.getLogger("inferd.python")


class _Adapter(Protocol):
    def load(self) -> None: ...
    def run(self, inputs: dict[str, np.ndarray]) -> Any: ...
    def close(self) -> None: ...


def _ensure_logging() -> None:
    """A spawned instance process has no logging set up: the model's log lines go to standard error."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
        root.setLevel(logging.INFO)


def _as_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, bytearray | memoryview | np.bytes_):
        return bytes(value)
    return str(value).encode("utf-8")


class PythonBackend:
    """One instance of a Python model (in its instance process)."""

    releases_gil = False
    # Set by the model manager: the interpreter of a version folder's own environment (its requirements.txt), or
    # None for the server's. `auto_complete_config` runs there, so that model.py's imports resolve as in instances.
    interpreter_for: Callable[[Path], str | None] | None = None

    def __init__(self) -> None:
        self._adapter: _Adapter | None = None
        self._dtypes: dict[str, np.dtype[Any]] = {}
        self._name = "model"
        self._traceback_logged = False

    # ---- in the server process ----

    def autocomplete(self, config: ModelConfig, files: Path) -> ModelConfig:
        path = source.model_file(config, files)
        tree = source.parse(path)  # a syntax error makes the model UNAVAILABLE here, with its line
        node = source.declared_class(tree, config)
        if node is not None and source.defines(node, triton_autocomplete.METHOD):
            # Triton calls it whatever config.pbtxt says (it may only add to it); in a process of its own.
            interpreter = self.interpreter_for(files) if self.interpreter_for is not None else None
            triton_autocomplete.auto_complete(config, path, node.name, interpreter)
        if config.input or config.output:
            return config
        if node is not None and source.complete_from_class(config, node):
            return config
        where = f"class {node.name}" if node is not None else path.name
        raise ConfigError(f"model '{config.name}' has no inputs and outputs: write them in config.pbtxt, or "
                          f"declare 'inputs' and 'outputs' in {where}")

    # ---- in the instance process ----

    def load(self, config: ModelConfig, files: Path, device: str) -> None:
        _ensure_logging()
        path = source.model_file(config, files)
        module = import_model(path)
        cls = source.served_class(module, config, path)
        adapter: _Adapter
        if cls.__name__ == source.TRITON_CLASS or not callable(getattr(cls, "predict", None)):
            from ..compat.triton_python import TritonModel

            adapter = TritonModel(cls, config, files, device)
        else:
            from ._python_api import ClassModel

            adapter = ClassModel(cls, config)
        adapter.load()
        self._adapter = adapter
        self._name = config.name or self._name
        self._dtypes = {t.name: V2_TO_NUMPY[CONFIG_TO_V2[DataType.Name(t.data_type)]] for t in config.output
                        if CONFIG_TO_V2.get(DataType.Name(t.data_type)) in V2_TO_NUMPY}

    def execute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._adapter is None:
            raise InferError.unavailable("model instance is not loaded")
        try:
            outputs = self._adapter.run(inputs)
        except InferError:
            raise
        except Exception as exc:
            from triton_python_backend_utils import TritonError

            if isinstance(exc, TritonError):
                from ..compat.triton_python import infer_error

                raise infer_error(exc) from None
            # The first failure's traceback for the model's author; later ones are one line in the server's log
            # (scheduling), with their tracebacks at debug verbosity only: no traceback flood per request.
            text = "".join(traceback.format_exception(exc)).rstrip()
            if not self._traceback_logged:
                self._traceback_logged = True
                log.error("model '%s' raised (later failures are logged in one line):\n%s", self._name, text)
            else:
                log.debug("model '%s' raised:\n%s", self._name, text)
            # A MemoryError stays one: an instance process with a memory limit recycles itself on it.
            error = MemoryError if isinstance(exc, MemoryError) else RuntimeError
            raise error(f"{type(exc).__name__}: {' '.join(str(exc).split())}") from None
        return self._conform(outputs)

    def _conform(self, outputs: Any) -> dict[str, np.ndarray]:
        """The declared outputs as arrays of their declared data type."""
        if not isinstance(outputs, dict):
            raise InferError.internal(f"the model returned {type(outputs).__name__}, not a dict of output name -> "
                                      "array")
        conformed: dict[str, np.ndarray] = {}
        for name, value in outputs.items():
            dtype = self._dtypes.get(str(name))
            if dtype is None:
                continue  # not a declared output: nobody can ask for it
            array = value if isinstance(value, np.ndarray) else np.asarray(value)
            if dtype.hasobject:
                if not (array.dtype.hasobject and all(isinstance(v, bytes) for v in array.flat)):
                    array = np.array([_as_bytes(v) for v in array.flat], dtype=np.object_).reshape(array.shape)
            elif array.dtype != dtype:
                if array.dtype.hasobject or array.dtype.kind in "SU":
                    raise InferError.internal(f"output '{name}' holds {array.dtype} values but is declared "
                                              f"{dtype} in the model config")
                array = array.astype(dtype)
            conformed[str(name)] = array
        return conformed

    def unload(self) -> None:
        adapter, self._adapter = self._adapter, None
        if adapter is not None:
            adapter.close()
