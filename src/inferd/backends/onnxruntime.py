"""ONNX Runtime backend (Triton's `onnxruntime` backend / `onnxruntime_onnx` platform)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from ..config import ConfigError, DataType, ModelConfig, int_parameter, string_parameter
from ..types import InferError
from . import _ort_reload
from .settings import DEFAULT_MAX_BATCH_SIZE, batch_by_default

log = logging.getLogger("inferd.onnxruntime")

DEFAULT_FILENAME = "model.onnx"

# ONNX tensor element types (as ORT names them) -> ModelConfig DataType names.
_ORT_TO_CONFIG = {
    "tensor(bool)": "TYPE_BOOL",
    "tensor(uint8)": "TYPE_UINT8",
    "tensor(uint16)": "TYPE_UINT16",
    "tensor(uint32)": "TYPE_UINT32",
    "tensor(uint64)": "TYPE_UINT64",
    "tensor(int8)": "TYPE_INT8",
    "tensor(int16)": "TYPE_INT16",
    "tensor(int32)": "TYPE_INT32",
    "tensor(int64)": "TYPE_INT64",
    "tensor(float16)": "TYPE_FP16",
    "tensor(float)": "TYPE_FP32",
    "tensor(double)": "TYPE_FP64",
    "tensor(string)": "TYPE_STRING",
    "tensor(bfloat16)": "TYPE_BF16",
}

# Triton's `optimization { graph { level } }`: -1 basic, 1 extended, anything else all.
_GRAPH_LEVELS = {
    -1: ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    1: ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
}


def _model_path(config: ModelConfig, files: Path) -> Path:
    path = files / (config.default_model_filename or DEFAULT_FILENAME)
    if path.is_dir():  # Triton also accepts a folder holding model.onnx and its external data
        path = path / DEFAULT_FILENAME
    if not path.is_file():
        raise ConfigError(f"model file {path} not found")
    return path


def session_options(config: ModelConfig) -> ort.SessionOptions:
    """Session options from the config, using the parameter names of Triton's ORT backend."""
    options = ort.SessionOptions()
    intra = int_parameter(config, "intra_op_thread_count")
    if intra is not None:
        options.intra_op_num_threads = intra
    inter = int_parameter(config, "inter_op_thread_count")
    if inter is not None:
        options.inter_op_num_threads = inter
    if int_parameter(config, "execution_mode") == 1:
        options.execution_mode = ort.ExecutionMode.ORT_PARALLEL
    for key, attr in (("enable_mem_arena", "enable_cpu_mem_arena"), ("enable_mem_pattern", "enable_mem_pattern")):
        flag = int_parameter(config, key)
        if flag is not None:
            setattr(options, attr, bool(flag))
    level = config.optimization.graph.level if config.HasField("optimization") else 0
    options.graph_optimization_level = _GRAPH_LEVELS.get(level, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    # Idle intra-op threads do not spin by default: in a server the cores they would burn belong to the
    # network frontends and to other models. Any ORT session config entry can be set as a parameter
    # (`parameters { key: "session.intra_op.allow_spinning" value { string_value: "1" } }`).
    entries = {_SPINNING: "0", **{k: str(v.string_value) for k, v in config.parameters.items()
                                  if k.startswith("session.")}}
    for key, value in entries.items():
        options.add_session_config_entry(key, value)
    return options


_SPINNING = "session.intra_op.allow_spinning"
_SHRINKAGE = "memory.enable_memory_arena_shrinkage"


def _run_options(config: ModelConfig) -> ort.RunOptions | None:
    """Triton's `memory.enable_memory_arena_shrinkage` parameter ("cpu:0", "cpu:0;gpu:0"): the arenas named give
    their unused memory back after every run. None (no run options) otherwise."""
    arenas = string_parameter(config, _SHRINKAGE)
    if not arenas:
        return None
    if "cpu" in arenas and int_parameter(config, "enable_mem_arena") == 0:  # else every run fails, not the load
        raise ConfigError(f"parameter '{_SHRINKAGE}' names the CPU arena ({arenas}), but enable_mem_arena is 0: "
                          "there is no CPU arena to shrink")
    options = ort.RunOptions()
    options.add_run_config_entry(_SHRINKAGE, arenas)
    return options


# Triton's names for ONNX Runtime's execution providers in `optimization { execution_accelerators { ... } }`
# ("cpu" too, and "dnnl" for oneDNN); a provider's own name (`OpenVINOExecutionProvider`) is taken as well.
ACCELERATORS = {
    "cpu": "CPUExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "dnnl": "DnnlExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
# Triton's TensorRT accelerator parameters -> ONNX Runtime's TensorRT provider options (others pass as they are).
_TENSORRT_OPTIONS = {"max_workspace_size_bytes": "trt_max_workspace_size", "trt_engine_cache_enable":
                     "trt_engine_cache_enable", "trt_engine_cache_path": "trt_engine_cache_path",
                     "max_partition_iterations": "trt_max_partition_iterations",
                     "minimum_segment_size": "trt_min_subgraph_size"}


def _providers(config: ModelConfig, device: str) -> tuple[list[Any], list[str]]:
    """The execution providers of a session, in order of preference: the config's accelerators for the instance's
    kind (GPU accelerators for a GPU instance, CPU ones for a CPU instance, as Triton), then the device's default.
    A named accelerator that this onnxruntime lacks is a config error (the model is UNAVAILABLE with why). Returns
    the providers and the names of those the config asked for."""
    gpu = device.startswith("cuda")
    device_id = int(device.partition(":")[2] or 0) if gpu else 0
    accelerators = config.optimization.execution_accelerators if config.HasField("optimization") else None
    named = list(accelerators.gpu_execution_accelerator if gpu else accelerators.cpu_execution_accelerator) \
        if accelerators is not None else []
    providers: list[Any] = []
    available = ort.get_available_providers()
    for accelerator in named:
        provider = ACCELERATORS.get(accelerator.name.lower(), accelerator.name)
        if provider not in ort.get_all_providers():
            raise ConfigError(f"unknown execution accelerator '{accelerator.name}' for onnxruntime (known: "
                              f"{', '.join(ACCELERATORS)})")
        if provider not in available:
            raise ConfigError(f"execution accelerator '{accelerator.name}' needs ONNX Runtime's {provider}, which "
                              f"this onnxruntime does not have (available: {', '.join(available)})")
        options = dict(accelerator.parameters)
        if provider == "TensorrtExecutionProvider":
            options = _tensorrt_options(options)
        if provider in ("CUDAExecutionProvider", "TensorrtExecutionProvider"):
            options.setdefault("device_id", str(device_id))
        if all(p[0] != provider for p in providers):
            providers.append((provider, options))
    default = [("CUDAExecutionProvider", {"device_id": device_id}), "CPUExecutionProvider"] if gpu \
        else ["CPUExecutionProvider"]
    names = [p[0] for p in providers]
    return providers + [p for p in default if (p[0] if isinstance(p, tuple) else p) not in names], names


def _tensorrt_options(parameters: dict[str, str]) -> dict[str, str]:
    options = {_TENSORRT_OPTIONS.get(k, k): v for k, v in parameters.items() if k != "precision_mode"}
    precision = parameters.get("precision_mode", "FP32").upper()
    if precision == "FP16":
        options["trt_fp16_enable"] = "True"
    elif precision == "INT8":
        options["trt_int8_enable"] = "True"
    elif precision != "FP32":
        raise ConfigError(f"execution accelerator 'tensorrt': precision_mode must be FP32, FP16 or INT8, got "
                          f"'{parameters['precision_mode']}'")
    return options


def _dims(shape: list[Any]) -> list[int]:
    return [d if isinstance(d, int) and d > 0 else -1 for d in shape]


class OnnxRuntimeBackend:
    """One ONNX Runtime session. ORT releases the GIL while it runs, so instances run on threads."""

    releases_gil = True
    # auto-complete's max_batch_size for a model that can batch (the server sets --backend-config's)
    default_max_batch_size = DEFAULT_MAX_BATCH_SIZE

    def __init__(self) -> None:
        self._session: ort.InferenceSession | None = None
        self._probe: ort.InferenceSession | None = None
        self._output_names: list[str] = []
        self._string_inputs: set[str] = set()
        self._string_outputs = False
        self._run: Any = None
        self._run_options: ort.RunOptions | None = None
        self._source: tuple[ModelConfig, Path, str] | None = None  # what `load` loaded (for prepare_reload)

    def _open(self, config: ModelConfig, files: Path, device: str) -> ort.InferenceSession:
        path = _model_path(config, files)
        providers, accelerators = _providers(config, device)
        options = session_options(config)
        optimized = _ort_reload.find(path, options) if providers == ["CPUExecutionProvider"] else None
        if optimized is not None:  # saved when the model last scaled to zero: no need to optimize it again
            path, options.graph_optimization_level = optimized, ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        try:
            session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:  # ORT raises its own exception types for corrupt or unsupported models
            raise ConfigError(f"onnxruntime failed to load {path.name}: {' '.join(str(exc).split())}") from None
        # ORT falls back to the next provider when one cannot start (its libraries missing): a named accelerator
        # that is not in use would serve slower than the config says, so the model is UNAVAILABLE instead.
        used = session.get_providers()
        for name in accelerators:
            if name not in used:
                raise ConfigError(f"execution accelerator {name} could not start on {device} (onnxruntime runs "
                                  f"this model with {', '.join(used)}); see the server log for onnxruntime's reason")
        return session

    def autocomplete(self, config: ModelConfig, files: Path) -> ModelConfig:
        session = self._open(config, files, "cpu")
        self._probe = session  # the first CPU instance reuses it instead of loading the file twice
        model_inputs, model_outputs = session.get_inputs(), session.get_outputs()
        completing_io = not config.input and not config.output
        if config.max_batch_size == 0 and completing_io:
            batchable = all(len(t.shape) > 0 and not isinstance(t.shape[0], int) for t in model_inputs + model_outputs)
            if batchable:
                batch_by_default(config, self.default_max_batch_size)
        skip = 1 if config.max_batch_size > 0 else 0
        for declared, found in ((config.input, model_inputs), (config.output, model_outputs)):
            known = {t.name: t for t in declared}
            for tensor in found:
                entry = known.get(tensor.name)
                if entry is None:
                    if declared and not completing_io:
                        continue  # a partial list is the user's choice; only fill in what they listed
                    entry = declared.add()
                    entry.name = tensor.name
                if entry.data_type == 0 and tensor.type in _ORT_TO_CONFIG:
                    entry.data_type = DataType.Value(_ORT_TO_CONFIG[tensor.type])
                if not entry.dims and not entry.HasField("reshape"):
                    dims = _dims(list(tensor.shape)[skip:])
                    entry.dims.extend(dims if dims else [1])
                    if not dims:  # a scalar model tensor is given to clients as [1]
                        entry.reshape.SetInParent()
        return config

    def prepare_reload(self) -> None:
        """This model is unloaded to be loaded again later (scaled to zero, scaling/): keep ORT's optimized graph
        of it, so that load skips the optimizations (see _ort_reload)."""
        if self._source is None:
            return
        config, files, device = self._source
        providers, _ = _providers(config, device)
        _ort_reload.save(_model_path(config, files), session_options(config), providers)

    def load(self, config: ModelConfig, files: Path, device: str) -> None:
        self._source = (config, files, device)
        if self._probe is not None and device == "cpu":
            self._session, self._probe = self._probe, None
        else:
            self._session = self._open(config, files, device)
        _check_against_model(config, self._session)
        self._output_names = [o.name for o in self._session.get_outputs()]
        self._string_inputs = {i.name for i in self._session.get_inputs() if i.type == "tensor(string)"}
        self._string_outputs = any(o.type == "tensor(string)" for o in self._session.get_outputs())
        # The C++ session's run: the Python wrapper's per-call checks repeat what check_inputs already did
        # (names, types, shapes) and cost ~5 µs, a third of a small model's whole run.
        self._run = getattr(self._session, "_sess", self._session).run
        self._run_options = _run_options(config)
        log.debug("loaded %s on %s with %s", files, device, self._session.get_providers())

    def execute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        session = self._session
        if session is None:
            raise InferError.unavailable("model instance is not loaded")
        if self._string_inputs:
            inputs = {k: (_to_str(k, v) if k in self._string_inputs else v) for k, v in inputs.items()}
        results = self._run(self._output_names, inputs, self._run_options)
        if not self._string_outputs:
            return dict(zip(self._output_names, results, strict=True))
        return {name: (_to_bytes(value) if value.dtype == np.object_ else value)
                for name, value in zip(self._output_names, results, strict=True)}

    def unload(self) -> None:
        self._session = None
        self._probe = None


def _check_against_model(config: ModelConfig, session: ort.InferenceSession) -> None:
    """The config must describe the model file: same tensor names, data types and ranks (as Triton checks)."""
    batch = 1 if config.max_batch_size > 0 else 0
    for kind, declared, found in (("input", config.input, session.get_inputs()),
                                  ("output", config.output, session.get_outputs())):
        model = {t.name: t for t in found}
        for tensor in declared:
            actual = model.get(tensor.name)
            if actual is None:
                raise ConfigError(f"unexpected {kind} '{tensor.name}' in the model configuration: the model's "
                                  f"{kind}s are {sorted(model)}")
            expected = _ORT_TO_CONFIG.get(actual.type)
            if expected is not None and DataType.Name(tensor.data_type) != expected:
                raise ConfigError(f"unexpected datatype {DataType.Name(tensor.data_type)} for {kind} "
                                  f"'{tensor.name}', the model provides {expected}")
            shape = list(tensor.reshape.shape) if tensor.HasField("reshape") else list(tensor.dims)
            if actual.shape is not None and len(actual.shape) != len(shape) + batch:
                raise ConfigError(f"{kind} '{tensor.name}' has {len(shape)} dims plus {batch} batch dim(s) in the "
                                  f"configuration but rank {len(actual.shape)} in the model")


def _to_str(name: str, array: np.ndarray) -> np.ndarray:
    """ORT string tensors hold UTF-8 text; numpy BYTES tensors hold bytes."""
    try:
        return np.array([v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in array.flat],
                        dtype=object).reshape(array.shape)
    except UnicodeDecodeError:
        raise InferError.invalid(f"input '{name}' holds bytes that are not valid UTF-8; "
                                 "ONNX string tensors can only hold UTF-8 text") from None


def _to_bytes(array: np.ndarray) -> np.ndarray:
    return np.array([v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in array.flat],
                    dtype=object).reshape(array.shape)
