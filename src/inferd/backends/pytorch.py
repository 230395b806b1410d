"""PyTorch backend (Triton's `pytorch` backend / `pytorch_libtorch` platform).

Two kinds of model file:

* TorchScript (`model.pt`, from `torch.jit.save`). As in Triton, its config must declare the inputs and outputs:
  a TorchScript module does not record its tensors' types and shapes. Inputs are passed by position: named
  `<name>__<index>` (Triton's `INPUT__0`, `INPUT__1`, ...) the index is the argument position; otherwise the names
  must be the `forward()` argument names (the named-input form). Outputs named `<name>__<index>` take that element
  of the returned tuple or list; otherwise they take the elements in config order.
* torch.export programs (`model.pt2`, from `torch.export.save`). Without a config they are auto-completed from the
  program's signature as `INPUT__0...` / `OUTPUT__0...` in argument and output order; a first dimension that is
  dynamic (`torch.export.Dim`) in every input and output makes the model batchable.

Parameters (Triton's names): `INTRA_OP_THREAD_COUNT` calls `torch.set_num_threads` and `INTER_OP_THREAD_COUNT`
`torch.set_num_interop_threads`. Both are process-wide in PyTorch: the last model loaded with one wins, and the
inter-op count can only be set before PyTorch first runs inter-op work (later it is ignored with a warning).
`INFERENCE_MODE` ("true" by default) runs under `torch.inference_mode()`, else under `torch.no_grad()`.
`DISABLE_OPTIMIZED_EXECUTION` ("true") runs TorchScript without its graph optimizations
(`torch.jit.optimized_execution(False)`), for this model only. `ENABLE_JIT_PROFILING`, `ENABLE_JIT_EXECUTOR` and
`DISABLE_CUDNN` set TorchScript's profiling mode / profiling executor and cuDNN, process-wide (when given).

KIND_GPU instances run on `cuda:N` when PyTorch sees a GPU, else on the CPU with a warning.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import ConfigError, DataType, ModelConfig, int_parameter, string_parameter
from ..types import CONFIG_TO_V2, V2_TO_NUMPY, InferError
from .settings import DEFAULT_MAX_BATCH_SIZE, batch_by_default

log = logging.getLogger("inferd.pytorch")

TORCHSCRIPT_FILENAME = "model.pt"
EXPORT_FILENAME = "model.pt2"

# Inputs come from numpy arrays the server does not let the model write to; torch shares their memory anyway.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning)

_TORCH_TO_CONFIG: dict[torch.dtype, str] = {
    torch.bool: "TYPE_BOOL",
    torch.uint8: "TYPE_UINT8",
    torch.uint16: "TYPE_UINT16",
    torch.uint32: "TYPE_UINT32",
    torch.uint64: "TYPE_UINT64",
    torch.int8: "TYPE_INT8",
    torch.int16: "TYPE_INT16",
    torch.int32: "TYPE_INT32",
    torch.int64: "TYPE_INT64",
    torch.float16: "TYPE_FP16",
    torch.float32: "TYPE_FP32",
    torch.float64: "TYPE_FP64",
}
# Config data types a TorchScript output can have (every numeric one), as numpy types.
_CONFIG_TO_NUMPY: dict[str, type] = {name: V2_TO_NUMPY[v2].type for name, v2 in CONFIG_TO_V2.items()
                                     if v2 in V2_TO_NUMPY and v2 != "BYTES"}
_INDEXED = re.compile(r"^.+__(\d+)$")
# torch.export.load keeps its deserializer in a module global: two models loading at once on the server's
# threads fail with "_CURRENT_DESERIALIZER is already set". Loads of model files take turns.
_LOAD_LOCK = threading.Lock()


def _model_path(config: ModelConfig, files: Path) -> Path:
    names = [config.default_model_filename] if config.default_model_filename else [TORCHSCRIPT_FILENAME,
                                                                                     EXPORT_FILENAME]
    for name in names:
        if (files / name).is_file():
            return files / name
    raise ConfigError(f"model file {files / names[0]} not found")


def _is_export(path: Path) -> bool:
    return path.suffix == ".pt2"


def _apply_threads(config: ModelConfig) -> None:
    intra = int_parameter(config, "INTRA_OP_THREAD_COUNT")
    if intra is not None and intra > 0:
        torch.set_num_threads(intra)
    inter = int_parameter(config, "INTER_OP_THREAD_COUNT")
    if inter is not None and inter > 0 and inter != torch.get_num_interop_threads():
        try:
            torch.set_num_interop_threads(inter)
        except RuntimeError as exc:  # only possible before PyTorch's first inter-op work, once per process
            log.warning("INTER_OP_THREAD_COUNT=%d ignored for '%s': %s", inter, config.name, exc)


def _flag(config: ModelConfig, key: str) -> bool | None:
    """A boolean parameter ("true"/"false", "1"/"0", "on"/"off", "yes"/"no"); None when absent."""
    value = string_parameter(config, key).strip().lower()
    if not value:
        return None
    if value in ("true", "1", "on", "yes"):
        return True
    if value in ("false", "0", "off", "no"):
        return False
    raise ConfigError(f"parameter '{key}' must be true or false, got '{value}'")


def _apply_jit_options(config: ModelConfig) -> None:
    """Triton's process-wide TorchScript and cuDNN switches, when the config gives them."""
    profiling = _flag(config, "ENABLE_JIT_PROFILING")
    if profiling is not None:
        torch._C._jit_set_profiling_mode(profiling)
    executor = _flag(config, "ENABLE_JIT_EXECUTOR")
    if executor is not None:
        torch._C._jit_set_profiling_executor(executor)
    cudnn = _flag(config, "DISABLE_CUDNN")
    if cudnn is not None:
        torch.backends.cudnn.enabled = not cudnn


def _run_mode(config: ModelConfig) -> Callable[[], Any]:
    """The context each execution runs in: inference mode (or no_grad), and without TorchScript's optimizations
    when DISABLE_OPTIMIZED_EXECUTION says so."""
    grad_off = torch.no_grad if _flag(config, "INFERENCE_MODE") is False else torch.inference_mode
    if not _flag(config, "DISABLE_OPTIMIZED_EXECUTION"):
        return grad_off

    @contextlib.contextmanager
    def unoptimized() -> Iterator[None]:
        with grad_off(), torch.jit.optimized_execution(False):
            yield

    return unoptimized


def _device(device: str, name: str) -> torch.device:
    if device.startswith("cuda"):
        if torch.cuda.is_available():
            return torch.device(device)
        log.warning("model '%s' asks for %s but PyTorch sees no GPU; its instance runs on the CPU", name, device)
    return torch.device("cpu")


class _Program:
    """A loaded model file: the callable, its forward() argument names, and (for torch.export) its signature."""

    def __init__(self, path: Path, device: torch.device) -> None:
        self.path = path
        self.exported = _is_export(path)
        # Per tensor: (dtype, shape with None for a dynamic dim); only torch.export programs record them.
        self.input_specs: list[tuple[torch.dtype, list[int | None]]] | None = None
        self.output_specs: list[tuple[torch.dtype, list[int | None]]] | None = None
        try:
            with _LOAD_LOCK:
                if self.exported:
                    program = torch.export.load(str(path))
                    self.arg_names = list(program.module_call_graph[0].signature.forward_arg_names or [])
                    self.input_specs, self.output_specs = _export_specs(program)
                    module = program.module()
                    if device.type != "cpu":
                        module = module.to(device)
                    self.forward: Callable[..., Any] = module
                else:
                    script = torch.jit.load(str(path), map_location=device)
                    script.eval()
                    arguments = script.forward.schema.arguments
                    self.arg_names = [a.name for a in arguments[1:]]  # the first is `self`
                    self.forward = script
        except ConfigError:
            raise
        except Exception as exc:  # torch raises many types for corrupt or mismatched files
            raise ConfigError(f"pytorch failed to load {path.name}: {' '.join(str(exc).split())}") from None


def _export_specs(program: Any) -> tuple[list[tuple[torch.dtype, list[int | None]]],
                                          list[tuple[torch.dtype, list[int | None]]]]:
    signature = program.graph_signature
    nodes = {n.name: n for n in program.graph.nodes if n.op in ("placeholder", "output")}

    def spec(value: Any, what: str) -> tuple[torch.dtype, list[int | None]]:
        if not isinstance(value, torch.Tensor):
            raise ConfigError(f"the exported program's {what} is not a tensor ({type(value).__name__}); "
                              "only tensor inputs and outputs can be served")
        return value.dtype, [d if isinstance(d, int) else None for d in value.shape]

    inputs = [spec(nodes[name].meta.get("val"), f"input '{name}'") for name in signature.user_inputs]
    output_node = next(n for n in program.graph.nodes if n.op == "output")
    user_outputs = set(signature.user_outputs)
    outputs = []
    for i, arg in enumerate(output_node.args[0]):
        if hasattr(arg, "name") and arg.name in user_outputs:
            outputs.append(spec(arg.meta.get("val"), f"output {i}"))
        elif arg is None or not hasattr(arg, "name"):
            raise ConfigError(f"the exported program's output {i} is a constant ({arg!r}); "
                              "only tensor outputs can be served")
    return inputs, outputs


def _config_type(dtype: torch.dtype, what: str) -> str:
    name = _TORCH_TO_CONFIG.get(dtype)
    if name is None:
        raise ConfigError(f"{what} has torch dtype {dtype}, which the pytorch backend cannot serve")
    return name


def _positions(kind: str, names: Sequence[str], arg_names: Sequence[str], count: int | None) -> list[int]:
    """Position of each config tensor: `<name>__<index>` everywhere, else forward() argument names (inputs)."""
    indexed = [_INDEXED.match(n) for n in names]
    if all(indexed):
        positions = [int(m.group(1)) for m in indexed if m]
    elif kind == "input":
        unknown = [n for n in names if n not in arg_names]
        if unknown:
            raise ConfigError(f"input(s) {unknown} follow neither the '<name>__<index>' convention nor the model's "
                              f"forward() argument names {list(arg_names)}")
        positions = [list(arg_names).index(n) for n in names]
    else:
        positions = list(range(len(names)))
    if len(set(positions)) != len(positions):
        raise ConfigError(f"two {kind}s of the configuration name the same position: {list(names)}")
    if count is not None:
        beyond = [n for n, p in zip(names, positions, strict=True) if p >= count]
        if beyond:
            raise ConfigError(f"{kind}(s) {beyond} name a position beyond the model's {count} {kind}s")
    return positions


class PyTorchBackend:
    """One loaded TorchScript module or exported program. libtorch releases the GIL in its ops: threads."""

    releases_gil = True
    # auto-complete's max_batch_size for a model that can batch (the server sets --backend-config's)
    default_max_batch_size = DEFAULT_MAX_BATCH_SIZE

    def __init__(self) -> None:
        self._probe: _Program | None = None
        self._program: _Program | None = None
        self._device = torch.device("cpu")
        self._input_names: list[str] = []  # config inputs in argument order
        self._outputs: list[tuple[str, int, Any]] = []  # (name, position in the result, numpy dtype)
        self._mode: Callable[[], Any] = torch.inference_mode

    def autocomplete(self, config: ModelConfig, files: Path) -> ModelConfig:
        path = _model_path(config, files)
        if not _is_export(path):
            if not config.input and not config.output:
                raise ConfigError(f"{path.name} is a TorchScript model, which cannot be auto-completed: its "
                                  "config.pbtxt must declare the inputs and outputs (as Triton requires)")
            return config  # nothing to learn from a TorchScript file; load() checks what it can
        program = _Program(path, torch.device("cpu"))
        self._probe = program  # the first CPU instance reuses it instead of loading the file twice
        assert program.input_specs is not None and program.output_specs is not None
        specs = program.input_specs + program.output_specs
        completing_io = not config.input and not config.output
        if config.max_batch_size == 0 and completing_io:
            if specs and all(shape and shape[0] is None for _, shape in specs):
                batch_by_default(config, self.default_max_batch_size)
        skip = 1 if config.max_batch_size > 0 else 0
        for kind, declared, found, prefix in (("input", config.input, program.input_specs, "INPUT"),
                                              ("output", config.output, program.output_specs, "OUTPUT")):
            if completing_io or not declared:
                for i in range(len(found)):
                    declared.add().name = f"{prefix}__{i}"
            names = [t.name for t in declared]
            positions = _positions(kind, names, program.arg_names, len(found))
            for entry, position in zip(declared, positions, strict=True):
                dtype, shape = found[position]
                if entry.data_type == 0:
                    entry.data_type = DataType.Value(_config_type(dtype, f"{kind} '{entry.name}'"))
                if not entry.dims and not entry.HasField("reshape"):
                    dims = [-1 if d is None else d for d in shape[skip:]]
                    entry.dims.extend(dims if dims else [1])
                    if not dims:  # a scalar model tensor is given to clients as [1]
                        entry.reshape.SetInParent()
        return config

    def load(self, config: ModelConfig, files: Path, device: str) -> None:
        _apply_threads(config)
        _apply_jit_options(config)
        self._mode = _run_mode(config)
        self._device = _device(device, config.name)
        if self._probe is not None and self._device.type == "cpu":
            program, self._probe = self._probe, None
        else:
            self._probe = None
            program = _Program(_model_path(config, files), self._device)
        for kind, tensors in (("input", config.input), ("output", config.output)):
            for tensor in tensors:
                if DataType.Name(tensor.data_type) not in _CONFIG_TO_NUMPY:
                    raise ConfigError(f"{kind} '{tensor.name}' has data type {DataType.Name(tensor.data_type)}, "
                                      "which the pytorch backend does not support (BYTES tensors included)")
        input_count = len(program.input_specs) if program.input_specs is not None else len(program.arg_names)
        output_count = len(program.output_specs) if program.output_specs is not None else None
        in_positions = _positions("input", [t.name for t in config.input], program.arg_names, input_count)
        order = sorted(range(len(in_positions)), key=lambda i: in_positions[i])
        if [in_positions[i] for i in order] != list(range(len(order))):
            raise ConfigError(f"the configuration's inputs {[t.name for t in config.input]} must cover the model's "
                              f"first {len(order)} forward() arguments without gaps")
        if program.input_specs is not None and len(order) != len(program.input_specs):
            raise ConfigError(f"the model takes {len(program.input_specs)} inputs, the configuration declares "
                              f"{len(order)}")
        self._input_names = [config.input[i].name for i in order]
        out_positions = _positions("output", [t.name for t in config.output], program.arg_names, output_count)
        self._outputs = [(t.name, p, _CONFIG_TO_NUMPY[DataType.Name(t.data_type)])
                         for t, p in zip(config.output, out_positions, strict=True)]
        if program.input_specs is not None and program.output_specs is not None:
            _check_against_program(config, program, in_positions, out_positions)
        self._program = program
        log.debug("loaded %s on %s", program.path, self._device)

    def execute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        program = self._program
        if program is None:
            raise InferError.unavailable("model instance is not loaded")
        device = self._device
        with self._mode():
            args = []
            for name in self._input_names:
                tensor = torch.from_numpy(np.ascontiguousarray(inputs[name]))
                args.append(tensor if device.type == "cpu" else tensor.to(device, non_blocking=True))
            result = program.forward(*args)
            results = _flatten(result)
            outputs: dict[str, np.ndarray] = {}
            for name, position, dtype in self._outputs:
                if position >= len(results):
                    raise InferError.internal(f"output '{name}' names position {position} but the model returned "
                                              f"{len(results)} tensor(s)")
                value = results[position]
                if not isinstance(value, torch.Tensor):
                    raise InferError.internal(f"the model's output {position} is {type(value).__name__}, "
                                              "not a tensor")
                array = value.cpu().numpy() if value.device.type != "cpu" else value.numpy()
                if array.dtype != dtype:
                    raise InferError.internal(f"output '{name}' is {array.dtype} but the configuration says "
                                              f"{np.dtype(dtype)}")
                outputs[name] = array
        return outputs

    def unload(self) -> None:
        self._program = None
        self._probe = None
        if self._device.type == "cuda":
            with contextlib.suppress(Exception):
                torch.cuda.empty_cache()


def _flatten(result: Any) -> list[Any]:
    if isinstance(result, torch.Tensor):
        return [result]
    if isinstance(result, (tuple, list)):
        return list(result)
    if isinstance(result, dict):
        return list(result.values())
    return [result]


def _check_against_program(config: ModelConfig, program: _Program, in_positions: list[int],
                           out_positions: list[int]) -> None:
    """The config must describe an exported program: same data types and ranks (as Triton checks)."""
    assert program.input_specs is not None and program.output_specs is not None
    batch = 1 if config.max_batch_size > 0 else 0
    for kind, declared, specs, positions in (("input", config.input, program.input_specs, in_positions),
                                             ("output", config.output, program.output_specs, out_positions)):
        for tensor, position in zip(declared, positions, strict=True):
            dtype, shape = specs[position]
            expected = _TORCH_TO_CONFIG.get(dtype)
            if expected is not None and DataType.Name(tensor.data_type) != expected:
                raise ConfigError(f"unexpected datatype {DataType.Name(tensor.data_type)} for {kind} "
                                  f"'{tensor.name}', the model provides {expected}")
            dims = list(tensor.reshape.shape) if tensor.HasField("reshape") else list(tensor.dims)
            if len(shape) != len(dims) + batch:
                raise ConfigError(f"{kind} '{tensor.name}' has {len(dims)} dims plus {batch} batch dim(s) in the "
                                  f"configuration but rank {len(shape)} in the model")
