"""TensorFlow backend (Triton's `tensorflow` backend / `tensorflow_savedmodel` platform).

A model version holds a SavedModel folder, `<model>/<version>/model.savedmodel/` (from `tf.saved_model.save` or a
Keras `model.export()`). One of its signatures is served: `serving_default` unless the config names another with the
parameter `TF_SIGNATURE_DEF` (Triton's name) or `signature_name` (the name TF-Serving's clients know; the V1 REST
metadata reports it). Auto-complete takes the signature's input and output keys as tensor names (sorted: a
SignatureDef has no order), their dtypes as data types and their shapes as dims; a variable (None) first dimension
in every input and output makes the model batchable (max_batch_size 4 with dynamic batching, as Triton's
auto-complete does), otherwise max_batch_size is 0 and the dims are the full shapes. A config that contradicts the
signature (an unknown tensor name, another data type, another rank or size) makes the model UNAVAILABLE at load.

BYTES tensors are `tf.string`: numpy object arrays of `bytes` in and out.

Parameters: `TF_NUM_INTRA_THREADS` and `TF_NUM_INTER_THREADS` (the thread pools of Triton's TF backend) set
TensorFlow's intra-op and inter-op parallelism. They are process-wide and TensorFlow accepts them only before its
runtime starts: the first TensorFlow model loaded decides, a later model asking for other counts gets a warning.

KIND_GPU instances run on `/GPU:N` when TensorFlow sees that GPU (not with the `tensorflow-cpu` build), else on the
CPU with a warning. TensorFlow's C++ logging is quieted (TF_CPP_MIN_LOG_LEVEL=2) unless the user set that variable.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from pathlib import Path
from typing import Any

import numpy as np

from ..config import ConfigError, DataType, ModelConfig, int_parameter, signature_name
from ..types import InferError
from .settings import DEFAULT_MAX_BATCH_SIZE, batch_by_default

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is first imported; a user's value stays

import tensorflow as tf  # only after the logging level above

log = logging.getLogger("inferd.tensorflow")

DEFAULT_FILENAME = "model.savedmodel"
_CPU = "/CPU:0"
_MAX_MESSAGE = 400  # TensorFlow's error texts can hold whole tracebacks; a client gets their head

_TF_TO_CONFIG: dict[Any, str] = {
    tf.bool: "TYPE_BOOL",
    tf.uint8: "TYPE_UINT8",
    tf.uint16: "TYPE_UINT16",
    tf.uint32: "TYPE_UINT32",
    tf.uint64: "TYPE_UINT64",
    tf.int8: "TYPE_INT8",
    tf.int16: "TYPE_INT16",
    tf.int32: "TYPE_INT32",
    tf.int64: "TYPE_INT64",
    tf.float16: "TYPE_FP16",
    tf.float32: "TYPE_FP32",
    tf.float64: "TYPE_FP64",
    tf.string: "TYPE_STRING",
}
_OP_SUFFIX = re.compile(r"\s*\[Op:[^\]]*\]")
_TRACE_LINES = (" ", "\t", "Graph execution error", "Detected at node", "<stack traces")
# Thread settings that could not be applied, each warned about once (auto-complete and every instance try them).
_THREADS_WARNED: set[tuple[str, str, int]] = set()
# tf.saved_model.load is not documented as thread-safe and models load on several threads: loads take turns (they
# are rare and short; inference itself runs concurrently).
_LOAD_LOCK = threading.Lock()


def _one_line(text: str) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= _MAX_MESSAGE else line[:_MAX_MESSAGE] + " ..."


def _tf_message(text: str) -> str:
    """TensorFlow's error text without the graph traceback and op names it wraps around the reason."""
    text = _OP_SUFFIX.sub("", text)
    if "Detected at node" in text:  # "Graph execution error: Detected at node N defined at ... <the reason>"
        reason = [line for line in text.splitlines() if line.strip() and not line.startswith(_TRACE_LINES)]
        text = " ".join(reason) or text
    return _one_line(text)


def _model_path(config: ModelConfig, files: Path) -> Path:
    path = files / (config.default_model_filename or DEFAULT_FILENAME)
    if not path.is_dir():
        raise ConfigError(f"SavedModel folder {path} not found")
    return path


def _apply_threads(config: ModelConfig) -> None:
    threading_api = tf.config.threading
    for key, get, put in (
        ("TF_NUM_INTRA_THREADS", threading_api.get_intra_op_parallelism_threads,
         threading_api.set_intra_op_parallelism_threads),
        ("TF_NUM_INTER_THREADS", threading_api.get_inter_op_parallelism_threads,
         threading_api.set_inter_op_parallelism_threads),
    ):
        count = int_parameter(config, key)
        if count is None:
            continue
        if count < 0:
            raise ConfigError(f"parameter '{key}' must be >= 0 (0: TensorFlow chooses), got {count}")
        if get() == count:
            continue
        try:
            put(count)
            log.info("%s=%d set by model '%s' (process-wide)", key, count, config.name)
        except RuntimeError:  # TensorFlow's runtime already started: the counts are fixed for this process
            if (config.name, key, count) in _THREADS_WARNED:
                continue
            _THREADS_WARNED.add((config.name, key, count))
            log.warning("%s=%d ignored for model '%s': TensorFlow's runtime already runs with %s (thread counts "
                        "are process-wide; the first TensorFlow model loaded sets them)", key, count, config.name,
                        get() or "its default count")


def _device(device: str, name: str) -> str:
    if device.startswith("cuda"):
        index = int(device.partition(":")[2] or 0)
        if index < len(tf.config.list_physical_devices("GPU")):
            return f"/GPU:{index}"
        log.warning("model '%s' asks for %s but TensorFlow sees no such GPU; its instance runs on the CPU",
                    name, device)
    return _CPU


def _shape(spec: Any) -> list[int | None] | None:
    """A TensorSpec's shape with None for variable dims, or None when even its rank is unknown."""
    shape = spec.shape
    return None if shape.rank is None else list(shape.as_list())


def _config_type(dtype: Any, what: str) -> str:
    name = _TF_TO_CONFIG.get(dtype)
    if name is None:
        raise ConfigError(f"{what} has TensorFlow dtype {dtype.name}, which the tensorflow backend cannot serve")
    return name


class _SavedModel:
    """A loaded SavedModel and the one signature served from it, with that signature's tensor specs in order."""

    def __init__(self, path: Path, signature: str, device: str) -> None:
        try:
            with _LOAD_LOCK, tf.device(device):
                self.module = tf.saved_model.load(str(path))
        except Exception as exc:  # TensorFlow raises OSError, ValueError and its own errors for bad folders
            raise ConfigError(f"tensorflow failed to load {path.name}: {_one_line(str(exc))}") from None
        signatures = self.module.signatures
        if signature not in signatures:
            found = ", ".join(f"'{s}'" for s in signatures) or "none"
            raise ConfigError(f"the SavedModel has no signature '{signature}' (its signatures: {found}); name one "
                              "with the parameter TF_SIGNATURE_DEF")
        self.signature = signature
        self.function = signatures[signature]
        _, kwargs = self.function.structured_input_signature
        # A SignatureDef keeps its tensors in maps, without an order: sorted names make configs reproducible.
        self.inputs: dict[str, Any] = dict(sorted(kwargs.items()))
        outputs = self.function.structured_outputs
        if not isinstance(outputs, dict):  # signatures always return a dict; anything else cannot be named
            raise ConfigError(f"signature '{signature}' does not return a dict of named tensors")
        self.outputs: dict[str, Any] = dict(sorted(outputs.items()))


class TensorFlowBackend:
    """One loaded SavedModel signature. TensorFlow runs its ops without the GIL: instance threads."""

    releases_gil = True
    # auto-complete's max_batch_size for a model that can batch (the server sets --backend-config's)
    default_max_batch_size = DEFAULT_MAX_BATCH_SIZE

    def __init__(self) -> None:
        self._probe: _SavedModel | None = None
        self._model: _SavedModel | None = None
        self._device = _CPU
        self._inputs: list[tuple[str, Any]] = []  # (name, tf dtype)
        self._outputs: list[tuple[str, np.dtype[Any]]] = []  # (name, numpy dtype)

    def autocomplete(self, config: ModelConfig, files: Path) -> ModelConfig:
        _apply_threads(config)  # before this first load starts TensorFlow's runtime
        model = _SavedModel(_model_path(config, files), signature_name(config), _CPU)
        self._probe = model  # the first CPU instance reuses it instead of loading the folder twice
        completing_io = not config.input and not config.output
        if config.max_batch_size == 0 and completing_io:
            shapes = [_shape(s) for s in [*model.inputs.values(), *model.outputs.values()]]
            if shapes and all(shape and shape[0] is None for shape in shapes):
                batch_by_default(config, self.default_max_batch_size)
        skip = 1 if config.max_batch_size > 0 else 0
        for kind, declared, found in (("input", config.input, model.inputs), ("output", config.output, model.outputs)):
            if not declared:
                for name in found:
                    declared.add().name = name
            for entry in declared:
                spec = found.get(entry.name)
                if spec is None:
                    continue  # load() names what the signature has
                if entry.data_type == 0:
                    entry.data_type = DataType.Value(_config_type(spec.dtype, f"{kind} '{entry.name}'"))
                if not entry.dims and not entry.HasField("reshape"):
                    shape = _shape(spec)
                    if shape is None:
                        raise ConfigError(f"{kind} '{entry.name}' has an unknown rank in signature "
                                          f"'{model.signature}': declare its dims in config.pbtxt")
                    dims = [-1 if d is None else d for d in shape[skip:]]
                    entry.dims.extend(dims if dims else [1])
                    if not dims:  # a scalar (per row) is given to clients as [1], as Triton does
                        entry.reshape.SetInParent()
        return config

    def load(self, config: ModelConfig, files: Path, device: str) -> None:
        _apply_threads(config)
        self._device = _device(device, config.name)
        if self._probe is not None and self._device == _CPU and self._probe.signature == signature_name(config):
            model, self._probe = self._probe, None
        else:
            self._probe = None
            model = _SavedModel(_model_path(config, files), signature_name(config), self._device)
        _check_against_signature(config, model)
        self._inputs = [(t.name, model.inputs[t.name].dtype) for t in config.input]
        self._outputs = [(t.name, np.dtype(model.outputs[t.name].dtype.as_numpy_dtype)) for t in config.output]
        self._model = model
        log.debug("loaded %s signature '%s' on %s", files / DEFAULT_FILENAME, model.signature, self._device)

    def execute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        model = self._model
        if model is None:
            raise InferError.unavailable("model instance is not loaded")
        try:
            with tf.device(self._device):
                feeds = {name: tf.convert_to_tensor(inputs[name], dtype=dtype) for name, dtype in self._inputs}
                result = model.function(**feeds)
        except tf.errors.InvalidArgumentError as exc:  # the values do not suit the model (shapes, asserts)
            raise InferError.invalid(f"tensorflow: {_tf_message(exc.message)}") from None
        except tf.errors.OpError as exc:
            raise InferError.internal(f"tensorflow: {_tf_message(exc.message)}") from None
        except (TypeError, ValueError) as exc:  # the signature refuses the tensors before running
            raise InferError.invalid(f"tensorflow: {_one_line(str(exc))}") from None
        outputs: dict[str, np.ndarray] = {}
        for name, dtype in self._outputs:
            array = np.asarray(result[name].numpy())
            if dtype == np.object_ or array.dtype == np.object_:
                array = array.astype(np.object_, copy=False)
            elif array.dtype != dtype:
                raise InferError.internal(f"output '{name}' is {array.dtype} but the signature says {dtype}")
            outputs[name] = array
        return outputs

    def unload(self) -> None:
        self._model = None
        self._probe = None


def _check_against_signature(config: ModelConfig, model: _SavedModel) -> None:
    """The config must describe the served signature: the same names, data types and compatible shapes."""
    batching = config.max_batch_size > 0
    for kind, declared, found in (("input", config.input, model.inputs), ("output", config.output, model.outputs)):
        for tensor in declared:
            spec = found.get(tensor.name)
            if spec is None:
                raise ConfigError(f"unexpected {kind} '{tensor.name}' in the configuration: signature "
                                  f"'{model.signature}' has {kind}s {list(found)}")
            expected = _config_type(spec.dtype, f"{kind} '{tensor.name}'")
            actual = DataType.Name(tensor.data_type)
            if actual != expected:
                raise ConfigError(f"unexpected datatype {actual} for {kind} '{tensor.name}': signature "
                                  f"'{model.signature}' provides {expected}")
            _check_shape(kind, tensor, _shape(spec), batching)
    missing = [name for name in model.inputs if name not in {t.name for t in config.input}]
    if missing:
        raise ConfigError(f"the configuration lacks input(s) {missing} of signature '{model.signature}' "
                          "(a signature needs all its inputs)")


def _check_shape(kind: str, tensor: Any, shape: list[int | None] | None, batching: bool) -> None:
    if shape is None:
        return  # an unknown rank accepts any shape
    dims = list(tensor.reshape.shape) if tensor.HasField("reshape") else list(tensor.dims)
    if batching:
        if not shape or shape[0] is not None:
            first = shape[0] if shape else "a scalar"
            raise ConfigError(f"max_batch_size > 0 needs a variable first dimension for {kind} '{tensor.name}', "
                              f"but the signature's shape starts with {first}: set max_batch_size 0")
        shape = shape[1:]
    if len(shape) != len(dims):
        raise ConfigError(f"{kind} '{tensor.name}' has {len(dims)} dims{' plus the batch dim' if batching else ''} "
                          f"in the configuration but rank {len(shape) + int(batching)} in the signature")
    for configured, found in zip(dims, shape, strict=True):
        if configured != -1 and found is not None and configured != found:
            raise ConfigError(f"{kind} '{tensor.name}' has dims {dims} in the configuration but shape "
                              f"{[-1 if d is None else d for d in shape]} in the signature")
