"""MLflow backend (`backend: "mlflow"`): an MLflow model folder served through its `python_function` flavor.

Layout: the MLflow model folder *is* the version folder (`<model>/<version>/MLmodel`, what `mlflow.*.save_model`
writes), or a folder inside it named by `default_model_filename` (`<model>/<version>/model/MLmodel`, an artifact
folder copied as it is; the config then says `backend: "mlflow"`). The model is loaded with
`mlflow.pyfunc.load_model` and called with `predict`, whatever flavor saved it (sklearn, a custom `PythonModel`,
models-from-code, ...).

SECURITY: loading an MLflow model runs code: its pickles (`model.pkl`, cloudpickled `PythonModel`s), its
models-from-code file and the `code` folders it adds to `sys.path`. Serve only models you trust as you would trust
code you install. The backend refuses a model folder of which any path (symlinks followed) lies outside the version
folder, so a link in a repository cannot make the server load a pickle from elsewhere on the host.

Auto-complete reads the signature in `MLmodel` (no pickle is loaded for that unless the output signature is missing):

* Column-based inputs (ColSpec, a DataFrame's columns): one V2 input per column, named as the column, dims [1]
  (one value per row), typed as the column (double: TYPE_FP64, float: TYPE_FP32, long: TYPE_INT64, integer:
  TYPE_INT32, boolean: TYPE_BOOL, string / binary / datetime: TYPE_STRING). This is what MLServer's MLflow runtime
  exposes, so V2 clients of MLServer work unchanged; a batch of N rows is each column as [N, 1]. The columns reach
  `predict` as a pandas DataFrame in the signature's order; a column that is not required is an optional input.
  Rows batch: `max_batch_size` and dynamic batching are set.
* Tensor-based inputs (TensorSpec): one V2 input per tensor with its dtype and shape; a leading -1 is the batch
  dimension (`max_batch_size`, dynamic batching), a per-row scalar (shape [-1]) is given to clients as dims [1]
  with an empty `reshape`. An unnamed tensor is `input__0` and reaches `predict` as the array itself; named
  tensors reach it as a dict of arrays.
* Outputs: the output signature's columns or tensors by name (unnamed: `output__0`, `output__1`...); without an
  output signature one output `output__0`, its type and width found by running `predict` once on the saved input
  example (or a row of zeros). Whatever `predict` returns (numpy array, DataFrame, Series, dict, list) is matched
  to the declared outputs by name, or by position when it carries no names.
* A model without a signature needs a `config.pbtxt` declaring its inputs (one input reaches `predict` as the
  array, several as a dict of arrays); without one it is UNAVAILABLE with that reason.

Instances run on threads (`releases_gil = True`). Most MLflow models wrap a framework whose predict runs in C
without the GIL (scikit-learn, XGBoost, LightGBM, PyTorch, TensorFlow, ONNX); the Python around it (MLflow's schema
enforcement, a DataFrame of the rows) is a small fixed cost per call, which dynamic batching spreads over many rows.
Threads share the server's packages and memory and load in milliseconds. Instance processes would also pick up the
`requirements.txt` MLflow writes into every model folder and build a virtual environment from it (see
instances/environments.py): MLflow pins the full `mlflow` package there (its tracking server, pyarrow,
matplotlib...), a large download per model that a server must not start behind its user's back. Like
`mlflow models serve --env-manager local`, the model runs with the server's packages. A custom `PythonModel` that
is pure Python and slow is better served as an inferd Python model (`model.py`), which runs in instance processes.

mlflow is imported only when such a model loads, with its telemetry off unless the environment says otherwise
(`MLFLOW_DISABLE_TELEMETRY`); a local folder never touches a tracking server. MLflow's Python warnings (advice to
the model's author: type hints, an input example) go to the debug log; its log lines, such as dependency mismatches
with the model's requirements.txt, are kept.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import ConfigError, DataType, ModelConfig
from ..types import CONFIG_TO_V2, V2_TO_CONFIG, V2_TO_NUMPY, InferError, datatype_of

log = logging.getLogger("inferd.mlflow")

MLMODEL = "MLmodel"
# A pyfunc call has a fixed cost (schema enforcement, a DataFrame) near a millisecond: many rows per call amortize it.
DEFAULT_MAX_BATCH_SIZE = 1024
_COLUMN_TYPES = {
    "boolean": "TYPE_BOOL", "integer": "TYPE_INT32", "long": "TYPE_INT64", "float": "TYPE_FP32",
    "double": "TYPE_FP64", "string": "TYPE_STRING", "binary": "TYPE_STRING", "datetime": "TYPE_STRING",
}
_TEXT_TYPES = ("string", "datetime")  # columns whose BYTES values reach the model as str (binary stays bytes)


def _mlflow() -> Any:
    """Import mlflow's pyfunc API on first use, its telemetry off unless the environment asks for it."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    # Advice meant for whoever saves a model, raised by mlflow's own modules while serving (loads record theirs:
    # see _LOAD_LOCK); a filter, as catch_warnings is not thread-safe.
    warnings.filterwarnings("ignore", category=UserWarning, module=r"mlflow(\.|$)")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"mlflow(\.|$)")
    try:
        import mlflow.pyfunc
    except ImportError as exc:
        raise ConfigError(f"the MLflow backend needs mlflow (pip install 'inferd[mlflow]'): {exc}") from None
    return mlflow


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


def model_folder(config: ModelConfig, files: Path) -> Path:
    """The MLflow model folder of a version (checked to lie wholly inside it), resolved."""
    folder = files / config.default_model_filename if config.default_model_filename else files
    if not (folder / MLMODEL).is_file():
        raise ConfigError(f"MLflow model file {folder / MLMODEL} not found")
    root, real = files.resolve(), folder.resolve()
    outside = [] if real.is_relative_to(root) else [(folder, real)]
    for path in real.rglob("*"):
        target = path.resolve()
        if not target.is_relative_to(root):
            outside.append((path, target))
            break
    if outside:
        path, target = outside[0]
        raise ConfigError(f"refusing to load the MLflow model in {folder}: {path} resolves to {target}, outside the "
                          f"version folder {root} (loading an MLflow model runs its pickles and code)")
    return real


def _read_meta(folder: Path) -> Any:
    mlflow = _mlflow()
    try:
        meta = mlflow.models.Model.load(str(folder / MLMODEL))
    except Exception as exc:  # a malformed MLmodel raises YAML, key or MLflow errors
        raise ConfigError(f"cannot read {folder / MLMODEL}: {_one_line(exc)}") from None
    if "python_function" not in meta.flavors:
        raise ConfigError(f"the MLflow model in {folder} has no python_function flavor (its flavors: "
                          f"{', '.join(meta.flavors) or 'none'}), so it cannot be served")
    return meta


# ---- the signature as V2 tensors ----

@dataclass(frozen=True, slots=True)
class Port:
    """One V2 tensor and what the model calls it."""

    name: str  # the V2 name
    key: str | int | None  # column / tensor name in the signature (int: an unnamed column; None: the unnamed tensor)
    data_type: str  # config type name
    shape: tuple[int, ...]  # the signature's shape with the batch dimension (columns: (-1, 1), one value a row)
    mlflow_type: str = ""  # ColSpec type name ("string", "binary", ...), "" for tensors
    optional: bool = False


@dataclass(frozen=True, slots=True)
class Plan:
    """The model's signature as V2 tensors: `form` is how inputs reach predict."""

    form: str  # "columns" (a DataFrame), "tensor" (one unnamed array), "tensors" (a dict), "raw" (no signature)
    inputs: tuple[Port, ...]
    outputs: tuple[Port, ...]  # empty when there is no output signature


def _tensor_type(dtype: Any, where: str) -> str:
    dtype = np.dtype(dtype)
    if dtype.kind in "OSU":
        return "TYPE_STRING"
    try:
        return V2_TO_CONFIG[datatype_of(np.empty(0, dtype=dtype))]
    except InferError:
        raise ConfigError(f"{where} has dtype {dtype}, which has no V2 datatype") from None


def _ports(schema: Any, prefix: str) -> tuple[str, tuple[Port, ...]]:
    """The V2 tensors of an MLflow Schema and whether it is column- or tensor-based."""
    specs = list(schema.inputs)
    if schema.is_tensor_spec():
        ports = []
        for i, spec in enumerate(specs):
            name = spec.name or f"{prefix}__{i}"
            ports.append(Port(name, spec.name, _tensor_type(spec.type, f"tensor '{name}'"), tuple(spec.shape)))
        named = all(spec.name for spec in specs)
        return ("tensors" if named else "tensor"), tuple(ports)
    ports = []
    for i, spec in enumerate(specs):
        name = spec.name or f"{prefix}__{i}"
        kind = getattr(spec.type, "name", None)
        if kind not in _COLUMN_TYPES:
            raise ConfigError(f"column '{name}' has MLflow type {spec.type!r}, which has no V2 tensor form "
                              f"(supported: {', '.join(_COLUMN_TYPES)})")
        ports.append(Port(name, spec.name if spec.name else i, _COLUMN_TYPES[kind], (-1, 1), kind,
                          optional=not getattr(spec, "required", True)))
    return "columns", tuple(ports)


def signature_plan(meta: Any) -> Plan:
    signature = meta.signature
    if signature is None or signature.inputs is None:
        outputs = _ports(signature.outputs, "output")[1] if signature is not None and signature.outputs else ()
        return Plan("raw", (), outputs)
    form, inputs = _ports(signature.inputs, "input")
    outputs = _ports(signature.outputs, "output")[1] if signature.outputs is not None else ()
    return Plan(form, inputs, outputs)


def _batchable(plan: Plan) -> bool:
    ports = plan.inputs + plan.outputs
    return bool(plan.inputs) and all(p.shape and p.shape[0] == -1 for p in ports)


def _complete(declared: Any, found: tuple[Port, ...], completing_io: bool, skip: int) -> None:
    """Add the ports the config leaves out (all, when it lists none) and fill the fields of those it lists."""
    known = {t.name: t for t in declared}
    for port in found:
        entry = known.get(port.name)
        if entry is None:
            if len(declared) and not completing_io:
                continue  # a partial list is the user's choice; only fill in what they listed
            entry = declared.add()
            entry.name = port.name
        if entry.data_type == 0:
            entry.data_type = DataType.Value(port.data_type)
        if port.optional and hasattr(entry, "optional"):
            entry.optional = True
        if not entry.dims and not entry.HasField("reshape"):
            dims = list(port.shape[skip:])
            entry.dims.extend(dims if dims else [1])
            if not dims:  # a per-row scalar is given to clients as [1]
                entry.reshape.SetInParent()


# ---- values in and out ----

def _as_text(array: np.ndarray) -> np.ndarray:
    """BYTES values (bytes objects) as str objects, for string columns and string tensors."""
    out = np.empty(array.size, dtype=object)
    out[:] = [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in array.flat]
    return out.reshape(array.shape)


def _as_bytes(array: np.ndarray) -> np.ndarray:
    out = np.empty(array.size, dtype=object)
    out[:] = [v if isinstance(v, bytes) else str(v).encode("utf-8") for v in array.flat]
    return out.reshape(array.shape)


def _stacked(array: np.ndarray) -> np.ndarray:
    """An object array of per-row arrays (a DataFrame column of vectors) as one numeric array."""
    if array.dtype == object and array.size and isinstance(array.flat[0], (list, tuple, np.ndarray)):
        return np.stack([np.asarray(v) for v in array])
    return array


def _by_name(result: dict[Any, Any], outputs: list[Port]) -> list[Any]:
    keys = {str(k): v for k, v in result.items()}
    if len(outputs) == 1 and len(keys) == 1:
        return list(keys.values())
    values = []
    for port in outputs:
        for key in (port.key, port.name):
            if key is not None and str(key) in keys:
                values.append(keys[str(key)])
                break
        else:
            raise InferError.internal(f"the model's predict returned {sorted(keys)} but not output '{port.name}'")
    return values


def _split(result: Any, outputs: list[Port]) -> list[Any]:
    """The values of the declared outputs in what predict returned."""
    import pandas as pd

    if isinstance(result, dict):
        return _by_name(result, outputs)
    if isinstance(result, pd.DataFrame):
        columns = [str(c) for c in result.columns]
        if len(outputs) > 1 or str(outputs[0].key) in columns or outputs[0].name in columns:
            if all(str(p.key) in columns or p.name in columns for p in outputs):
                return _by_name({str(c): result[c].to_numpy() for c in result.columns}, outputs)
            if len(columns) == len(outputs):
                return [result.iloc[:, i].to_numpy() for i in range(len(outputs))]
            raise InferError.internal(f"the model's predict returned columns {columns}, which do not match the "
                                      f"outputs {[p.name for p in outputs]}")
        return [result.to_numpy() if len(columns) > 1 else result.iloc[:, 0].to_numpy()]
    if isinstance(result, pd.Series):
        result = result.to_numpy()
    array = np.asarray(result)
    if len(outputs) == 1:
        return [array]
    if array.ndim == 2 and array.shape[1] == len(outputs):
        return [array[:, i] for i in range(len(outputs))]
    raise InferError.internal(f"the model's predict returned one array of shape {list(array.shape)} for "
                              f"{len(outputs)} outputs")


class _Output:
    """A declared output: its name, dtype and the per-row shape its values are given in."""

    def __init__(self, tensor: Any, batched: bool) -> None:
        self.name = tensor.name
        self.string = tensor.data_type == DataType.Value("TYPE_STRING")
        self.dtype = None if self.string else V2_TO_NUMPY[CONFIG_TO_V2[DataType.Name(tensor.data_type)]]
        self.dims = tuple(int(d) for d in tensor.dims)
        self.batched = batched

    def shaped(self, value: Any, rows: int) -> np.ndarray:
        array = _stacked(np.asarray(value))
        if self.string:
            array = _as_bytes(array)
        else:
            try:
                array = array.astype(self.dtype, copy=False)
            except (TypeError, ValueError) as exc:
                raise InferError.internal(f"output '{self.name}' of the model cannot be given as "
                                          f"{np.dtype(self.dtype).name}: {exc}") from None
        want = ((rows,) if self.batched else ()) + self.dims
        if -1 not in want and array.size == int(np.prod(want)):
            return array.reshape(want)
        if self.batched and (array.ndim == 0 or array.shape[0] != rows):
            raise InferError.internal(f"output '{self.name}' of the model has shape {list(array.shape)} for "
                                      f"{rows} rows")
        return array


# ---- the backend ----

# MLflow resets the warning filters inside its own calls (`catch_warnings` + `simplefilter("once")` when a
# `PythonModel` class is defined), so a filter cannot silence that advice; loads record their warnings instead, one
# at a time because `catch_warnings` swaps process-wide state.
_LOAD_LOCK = threading.Lock()


def _load_pyfunc(folder: Path) -> Any:
    mlflow = _mlflow()
    with _LOAD_LOCK, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            model = mlflow.pyfunc.load_model(str(folder))
        except Exception as exc:  # unpickling and user code raise anything
            raise ConfigError(f"MLflow failed to load the model in {folder}: {_one_line(exc)}") from None
    for warning in caught:
        log.debug("while loading %s: %s: %s", folder, warning.category.__name__,
                  re.sub(r"\x1b\[[0-9;]*m", "", str(warning.message)))  # without MLflow's terminal colours
    return model


def _probe_input(plan: Plan, config: ModelConfig, meta: Any, folder: Path) -> Any:
    """One request's worth of input for running predict at auto-complete: the saved example, else zeros."""
    try:
        example = meta.load_input_example(str(folder))
    except Exception:  # a missing or unreadable example: fall back on zeros
        example = None
    if example is not None:
        return example
    if not plan.inputs and not config.input:
        return None
    ports = plan.inputs or tuple(
        Port(t.name, t.name, DataType.Name(t.data_type), (-1, *[max(int(d), 1) for d in t.dims]))
        for t in config.input)

    def zeros(port: Port) -> Any:
        shape = tuple(max(d, 1) for d in port.shape) or (1,)
        if port.data_type == "TYPE_STRING":
            return np.full(shape, "", dtype=object)
        return np.zeros(shape, dtype=V2_TO_NUMPY[CONFIG_TO_V2[port.data_type]])

    if plan.form == "columns":
        import pandas as pd

        return pd.DataFrame({p.key: zeros(p).reshape(-1) for p in ports})
    if len(ports) == 1 and plan.form != "tensors":
        return zeros(ports[0])
    return {p.key if p.key is not None else p.name: zeros(p) for p in ports}


def _check_columns(config: ModelConfig, plan: Plan) -> None:
    """Every required column is an input, and each input is one value per row."""
    declared = {t.name: t for t in config.input}
    missing = [p.name for p in plan.inputs if not p.optional and p.name not in declared]
    if missing:
        raise ConfigError(f"the configuration leaves out the MLflow model's required column(s) {missing}")
    for tensor in config.input:
        shape = list(tensor.reshape.shape) if tensor.HasField("reshape") else list(tensor.dims)
        allowed = ([1], []) if config.max_batch_size > 0 else ([-1], [-1, 1])
        if shape not in allowed:
            raise ConfigError(f"input '{tensor.name}' is a column of the MLflow model's signature: one value per "
                              f"row, dims {allowed[0]}; the configuration gives {list(tensor.dims)}")


class MlflowBackend:
    """One `mlflow.pyfunc` model, on an instance thread (see the module docstring)."""

    releases_gil = True
    # MLflow writes a requirements.txt into every model folder as a record of the training environment.
    requirements_are_metadata = True

    def __init__(self) -> None:
        self._model: Any = None
        self._probe: Any = None  # the model auto-complete loaded to run once, reused by load
        self._form = "raw"
        self._inputs: list[tuple[str, str | int | None, str]] = []  # (V2 name, model key, ColSpec type)
        self._outputs: list[_Output] = []
        self._ports: list[Port] = []
        self._batched = False

    def autocomplete(self, config: ModelConfig, files: Path) -> ModelConfig:
        folder = model_folder(config, files)
        meta = _read_meta(folder)
        plan = signature_plan(meta)
        if plan.form == "raw" and not config.input:
            raise ConfigError(f"the MLflow model in {folder} has no signature: declare its inputs and outputs in "
                              "config.pbtxt, or save it with a signature (mlflow.models.infer_signature)")
        completing_io = not config.input and not config.output
        if config.max_batch_size == 0 and completing_io and _batchable(plan):
            config.max_batch_size = DEFAULT_MAX_BATCH_SIZE
            if not config.HasField("dynamic_batching") and not config.HasField("sequence_batching"):
                config.dynamic_batching.SetInParent()
        skip = 1 if config.max_batch_size > 0 else 0
        _complete(config.input, plan.inputs, completing_io, skip)
        if plan.outputs:
            _complete(config.output, plan.outputs, completing_io, skip)
        elif not config.output or any(t.data_type == 0 or not t.dims for t in config.output):
            self._complete_output_by_probe(config, plan, meta, folder, skip)
        return config

    def _complete_output_by_probe(self, config: ModelConfig, plan: Plan, meta: Any, folder: Path, skip: int) -> None:
        """Without an output signature: run predict once to learn `output__0`'s type and width."""
        if not config.output:
            config.output.add().name = "output__0"
        data_type, dims = "TYPE_FP32", [-1]
        sample = _probe_input(plan, config, meta, folder)
        if sample is not None and len(config.output) == 1:
            try:
                self._probe = _load_pyfunc(folder)
                result = self._probe.predict(sample)
                array = _stacked(np.asarray(_split(result, [Port(config.output[0].name, None, "", ())])[0]))
                data_type = _tensor_type(array.dtype, f"output '{config.output[0].name}'")
                # The probe is one row: without batching, the rows are the output's variable first dimension.
                dims = (list(array.shape[1:]) if skip else [-1, *array.shape[1:]]) or [1]
            except Exception as exc:  # the model may not take the example; the user can declare the output
                log.warning("could not run the MLflow model in %s on an example (%s); declaring output '%s' as "
                            "FP32 [-1] (declare it in config.pbtxt to choose)", folder, _one_line(exc),
                            config.output[0].name)
        for tensor in config.output:
            if tensor.data_type == 0:
                tensor.data_type = DataType.Value(data_type)
            if not tensor.dims and not tensor.HasField("reshape"):
                tensor.dims.extend(dims)

    def load(self, config: ModelConfig, files: Path, device: str) -> None:
        if device != "cpu":
            raise ConfigError(f"the MLflow backend runs models on the CPU (instance_group asks for {device})")
        folder = model_folder(config, files)
        meta = _read_meta(folder)
        plan = signature_plan(meta)
        self._batched = config.max_batch_size > 0
        by_name = {p.name: p for p in plan.inputs}
        if plan.form != "raw":
            unknown = [t.name for t in config.input if t.name not in by_name]
            if unknown:
                raise ConfigError(f"input(s) {unknown} are not in the MLflow model's signature (its inputs: "
                                  f"{', '.join(by_name)})")
        if plan.form == "columns":
            _check_columns(config, plan)
        self._form = plan.form
        self._inputs = [(t.name, by_name[t.name].key if t.name in by_name else t.name,
                         by_name[t.name].mlflow_type if t.name in by_name else "") for t in config.input]
        keys = {p.name: p.key for p in plan.outputs}
        self._ports = [Port(t.name, keys.get(t.name), "", ()) for t in config.output]
        self._outputs = [_Output(t, self._batched) for t in config.output]
        self._model, self._probe = (self._probe if self._probe is not None else _load_pyfunc(folder)), None
        log.debug("loaded the MLflow model in %s (inputs as %s)", folder, self._form)

    def _model_input(self, inputs: dict[str, np.ndarray]) -> tuple[Any, int]:
        rows = next((int(a.shape[0]) for a in inputs.values() if a.ndim), 1) if self._batched else 1
        if self._form == "columns":
            import pandas as pd

            columns: dict[Any, Any] = {}
            for name, key, kind in self._inputs:
                if name in inputs:
                    value = inputs[name].reshape(-1)
                    columns[key] = _as_text(value) if kind in _TEXT_TYPES else value
            return pd.DataFrame(columns), rows
        values = {name: (_as_text(a) if a.dtype == object else a) for name, a in inputs.items()}
        if self._form == "tensor" or (self._form == "raw" and len(self._inputs) == 1):
            return values[self._inputs[0][0]], rows
        return {key if key is not None else name: values[name] for name, key, _ in self._inputs if name in values}, rows

    def execute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._model is None:
            raise InferError.unavailable("model instance is not loaded")
        data, rows = self._model_input(inputs)
        try:
            result = self._model.predict(data)
        except Exception as exc:
            if type(exc).__name__ == "MlflowException" and getattr(exc, "error_code", "") in (
                    "INVALID_PARAMETER_VALUE", "BAD_REQUEST"):
                raise InferError.invalid(f"the MLflow model rejected the input: {' '.join(str(exc).split())}") \
                    from None
            raise
        values = _split(result, self._ports)
        return {out.name: out.shaped(value, rows) for out, value in zip(self._outputs, values, strict=True)}

    def unload(self) -> None:
        self._model = self._probe = None
