"""TorchServe model archives (`model.mar`), run by their own handler in instance processes.

A `.mar` is a zip holding `MAR-INF/MANIFEST.json` (`model.modelName`, `serializedFile`, `handler`, `modelFile`,
`configFile`, `requirementsFile`), the serialized model (TorchScript `.pt`, or a state dict with its model file),
the handler file (or the name of a built-in handler) and extra files such as `index_to_name.json`. It is served from
`<model>/<version>/model.mar` (Triton's layout; any one `<name>.mar` in the version folder, as the archiver names
it, is the model too; two are refused unless `default_model_filename` picks one) or as a bare `<name>.mar` in the
repository folder (TorchServe's model store: model `<name>`, version 1). The archive is extracted once into
`$INFERD_CACHE_DIR/torchserve/<sha256>/` (default `~/.cache/inferd/torchserve/`), refusing members with
absolute paths, `..` or links leading out; every instance of the model loads from there.

Handlers are Python code and hold the GIL, so `releases_gil` is False: each instance is a process of its own
(`instances/process.py`) in which inferd's `ts` shim is importable (see `inferd.compat.torchserve_handlers`).

Tensors (auto-completed when the config gives none):

* input `body` BYTES: one element per request, its raw body (an image, JSON, text...);
* input `headers` BYTES, optional, same shape: each element a JSON object of that request's HTTP headers (the
  `Content-Type` decides how the body is decoded for the handler, as in TorchServe: JSON parsed, text decoded,
  multipart/form-data split into fields, anything else bytes under "body");
* output `response` BYTES, same shape: what TorchServe would answer for that request (the handler's str as
  UTF-8, bytes as they are, anything else as JSON);
* output `response_meta` BYTES, same shape: JSON {"status", "phrase", "content_type", "headers"} that the handler
  set through its context (what `POST /predictions` answers with).

All elements of one execute call are one handler batch (`data` has one entry per element). Without batching
(`max_batch_size: 0`, the default) the dims are [-1] and a request of N elements is a batch of N. With the
archive's `model-config.yaml` giving `batchSize` > 1 (or a config that sets `max_batch_size`), the dims are [1],
`dynamic_batching` gathers requests (delay `maxBatchDelay` ms, TorchServe's default 100) and `minWorkers` sets
the instance count. A handler exception fails the whole batch ("Prediction failed", as TorchServe); a
`PredictionException(message, code)` fails it with that message and the closest status.

The archive's `requirementsFile` (`torch-model-archiver --requirements-file`) is installed as TorchServe does
only when asked, with TorchServe's own switch: the config parameter `install_py_dep_per_model` "true" (for one
model), or the environment variable `TS_INSTALL_PY_DEP_PER_MODEL=true` (TorchServe's environment form of its
config.properties entry, for every archive; a model's parameter "false" still turns it off). The file, in the
extracted folder, then gives the model a cached per-model environment (`instances/environments.py`; relative
entries such as `--find-links .` or `./dep.whl` resolve against the extracted archive), through the backend hook
`requirements_file`. Otherwise a warning says the file is not installed and how to turn the install on.

Not supported: `runtime` other than python, ONNX / TensorRT serialized files, the explanations API.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ..config import ConfigError, DataType, ModelConfig, string_parameter
from ..types import InferError

log = logging.getLogger("inferd.torchserve")

__all__ = ["MAR_FILENAME", "TorchServeBackend", "cache_dir", "extract_mar", "read_manifest"]

MAR_FILENAME = "model.mar"
MAR_SUFFIX = ".mar"
MANIFEST = "MAR-INF/MANIFEST.json"
BODY, HEADERS, RESPONSE, RESPONSE_META = "body", "headers", "response", "response_meta"
DEFAULT_MAX_BATCH_DELAY_MS = 100  # TorchServe's default maxBatchDelay
INSTALL_DEPS_PARAMETER = "install_py_dep_per_model"  # TorchServe's config.properties name
INSTALL_DEPS_VARIABLE = "TS_INSTALL_PY_DEP_PER_MODEL"  # ...and its environment-variable form
_CHUNK = 1 << 20


def cache_dir() -> Path:
    """`$INFERD_CACHE_DIR/torchserve`, else `$XDG_CACHE_HOME/inferd/torchserve` (`~/.cache/inferd/torchserve`)."""
    explicit = os.environ.get("INFERD_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser() / "torchserve"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "inferd" / "torchserve"


def mar_path(config: ModelConfig, files: Path) -> Path:
    """The version folder's archive: `default_model_filename`, else model.mar, else its one `*.mar`."""
    path = files / (config.default_model_filename or MAR_FILENAME)
    if path.is_file() or config.default_model_filename:
        if not path.is_file():
            raise ConfigError(f"model archive {path} not found")
        return path
    found = sorted(p for p in files.glob(f"*{MAR_SUFFIX}") if p.is_file() and not p.name.startswith("."))
    if len(found) == 1:
        return found[0]
    if not found:
        raise ConfigError(f"model archive {path} not found (and no other .mar file in {files})")
    raise ConfigError(f"{files} holds {len(found)} .mar files ({', '.join(p.name for p in found)}): a version "
                      "folder serves one archive; keep one, or name it with default_model_filename")


def read_manifest(archive: Path) -> dict[str, Any]:
    """MANIFEST.json of a .mar, read from the zip without extracting anything."""
    try:
        with zipfile.ZipFile(archive) as mar:
            raw = mar.read(MANIFEST)
    except KeyError:
        raise ConfigError(f"{archive.name} has no {MANIFEST}: it is not a TorchServe model archive") from None
    except (zipfile.BadZipFile, OSError) as exc:
        raise ConfigError(f"{archive.name} is not a readable .mar (zip) archive: {exc}") from None
    try:
        manifest = json.loads(raw)
    except ValueError as exc:
        raise ConfigError(f"{archive.name}: {MANIFEST} is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("model"), dict):
        raise ConfigError(f"{archive.name}: {MANIFEST} has no 'model' object")
    return manifest


def _model_yaml(archive: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """The archive's model-config.yaml (`configFile`), {} when it has none or PyYAML is not installed."""
    name = manifest["model"].get("configFile")
    if not name:
        return {}
    try:
        import yaml
    except ImportError:
        log.warning("%s has a model config file %s but PyYAML is not installed; it is ignored", archive, name)
        return {}
    try:
        with zipfile.ZipFile(archive) as mar:
            doc = yaml.safe_load(mar.read(Path(name).name))
    except (KeyError, yaml.YAMLError) as exc:
        raise ConfigError(f"{archive.name}: cannot read its config file {name}: {exc}") from None
    return doc if isinstance(doc, dict) else {}


def _switch(value: str, where: str) -> bool:
    text = value.strip().lower()
    if text in ("true", "false"):
        return text == "true"
    raise ConfigError(f"{where} must be \"true\" or \"false\", got '{value}'")


def install_dependencies(config: ModelConfig) -> bool:
    """Whether the archive's requirements file is installed: the model's parameter, else the server-wide variable."""
    if INSTALL_DEPS_PARAMETER in config.parameters:
        return _switch(string_parameter(config, INSTALL_DEPS_PARAMETER), f"parameter '{INSTALL_DEPS_PARAMETER}'")
    value = os.environ.get(INSTALL_DEPS_VARIABLE, "")
    return _switch(value, f"${INSTALL_DEPS_VARIABLE}") if value.strip() else False


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def extract_mar(archive: Path, root: Path | None = None) -> Path:
    """The archive's extracted folder in the cache, extracting it the first time (safely, atomically).

    Keyed by the content hash: instances and restarts reuse it, a changed archive gets a folder of its own.
    Several processes may extract at once; each writes a private folder and the first rename wins.
    """
    from ..archives import extract_archive

    base = root if root is not None else cache_dir()
    target = base / _sha256(archive)
    if (target / MANIFEST).is_file():
        return target
    base.mkdir(parents=True, exist_ok=True)
    staging = base / f".{target.name}.{os.getpid()}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        extract_archive(archive, staging)  # refuses absolute paths, '..' and links that lead out
        try:
            os.rename(staging, target)
        except OSError:
            if not (target / MANIFEST).is_file():
                raise
    except ValueError as exc:
        raise ConfigError(f"refusing to extract {archive}: {exc}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _add_tensor(tensors: Any, name: str, dims: list[int], optional: bool = False) -> None:
    tensor = tensors.add()
    tensor.name = name
    tensor.data_type = DataType.Value("TYPE_STRING")
    tensor.dims.extend(dims)
    if optional:
        tensor.optional = True


def _gpu_id(device: str) -> int | None:
    if not device.startswith("cuda"):
        return None
    import torch

    if not torch.cuda.is_available():
        log.warning("a TorchServe instance asks for %s but PyTorch sees no GPU; its handler runs on the CPU", device)
        return None
    _, _, index = device.partition(":")
    return int(index or 0)


def _strings(array: np.ndarray, name: str) -> list[bytes]:
    values = []
    for value in array.ravel():
        if isinstance(value, bytes):
            values.append(value)
        elif isinstance(value, str):
            values.append(value.encode("utf-8"))
        else:
            raise InferError.invalid(f"input '{name}' must hold bytes, got {type(value).__name__}")
    return values


def _headers(array: np.ndarray | None, count: int) -> list[dict[str, str]]:
    if array is None:
        return [{} for _ in range(count)]
    values = _strings(array, HEADERS)
    if len(values) != count:
        raise InferError.invalid(f"input '{HEADERS}' has {len(values)} elements but '{BODY}' has {count}: give one "
                                 "JSON object of headers per request")
    headers = []
    for value in values:
        try:
            doc = json.loads(value) if value else {}
        except ValueError:
            raise InferError.invalid(f"input '{HEADERS}' must hold JSON objects of header names and values") from None
        if not isinstance(doc, dict):
            raise InferError.invalid(f"input '{HEADERS}' must hold JSON objects of header names and values")
        headers.append({str(k): str(v) for k, v in doc.items()})
    return headers


class TorchServeBackend:
    """One instance of a .mar model: its extracted folder and its initialized handler (in an instance process)."""

    releases_gil = False

    def __init__(self) -> None:
        self._service: Any = None
        self._names = (BODY, HEADERS, RESPONSE, RESPONSE_META)

    def autocomplete(self, config: ModelConfig, files: Path) -> ModelConfig:
        archive = mar_path(config, files)
        manifest = read_manifest(archive)
        runtime = str(manifest.get("runtime", "python"))
        if runtime not in ("python", "python3"):
            raise ConfigError(f"{archive.name}: runtime '{runtime}' is not supported (only python handlers)")
        settings = _model_yaml(archive, manifest)
        completing_io = not config.input and not config.output
        batch_size = int(settings.get("batchSize", 1) or 1)
        if completing_io and config.max_batch_size == 0 and batch_size > 1:
            config.max_batch_size = batch_size
            if not config.HasField("dynamic_batching") and not config.HasField("sequence_batching"):
                delay_ms = int(settings.get("maxBatchDelay", DEFAULT_MAX_BATCH_DELAY_MS))
                config.dynamic_batching.max_queue_delay_microseconds = delay_ms * 1000
        workers = int(settings.get("minWorkers", 0) or 0)
        if workers > 0 and not config.instance_group:
            config.instance_group.add().count = workers
        if completing_io:
            dims = [1] if config.max_batch_size > 0 else [-1]
            _add_tensor(config.input, BODY, dims)
            _add_tensor(config.input, HEADERS, dims, optional=True)
            _add_tensor(config.output, RESPONSE, dims)
            _add_tensor(config.output, RESPONSE_META, dims)
        return config

    def requirements_file(self, config: ModelConfig, files: Path) -> Path | None:
        """The extracted archive's requirements file when it is to be installed (the manager's environment hook).

        Called in the server before the instances start; None (with a warning when the archive has one) leaves
        the model on the server's environment.
        """
        archive = mar_path(config, files)
        name = read_manifest(archive)["model"].get("requirementsFile")
        if not name:
            return None
        if not install_dependencies(config):
            log.warning("model '%s': the archive's %s is not installed (TorchServe's install_py_dep_per_model is "
                        "off): set the config parameter '%s' to \"true\" or %s=true to install it into an "
                        "environment of the model's own, or install what it lists in the server's environment",
                        config.name, name, INSTALL_DEPS_PARAMETER, INSTALL_DEPS_VARIABLE)
            return None
        path = extract_mar(archive) / Path(str(name)).name
        if not path.is_file():
            raise ConfigError(f"{archive.name}: its manifest names the requirements file {name}, which the archive "
                              "does not hold")
        return path

    def _tensor_names(self, config: ModelConfig) -> tuple[str, str, str, str]:
        """(body, headers, response, response_meta): the configured BYTES tensors in order, or the default names."""
        inputs = [t.name for t in config.input]
        outputs = [t.name for t in config.output]
        body = BODY if BODY in inputs else inputs[0]
        headers = HEADERS if HEADERS in inputs else ""
        response = RESPONSE if RESPONSE in outputs else outputs[0]
        meta = RESPONSE_META if RESPONSE_META in outputs else ""
        return body, headers, response, meta

    def load(self, config: ModelConfig, files: Path, device: str) -> None:
        from ..compat.torchserve_handlers import HandlerService

        if not config.input or not config.output:
            raise ConfigError("a TorchServe model needs a BYTES input and a BYTES output")
        archive = mar_path(config, files)
        manifest = read_manifest(archive)
        settings = _model_yaml(archive, manifest)
        folder = extract_mar(archive)
        model_name = str(manifest["model"].get("modelName") or config.name)
        self._names = self._tensor_names(config)
        self._service = HandlerService(manifest, folder, model_name, max(1, int(config.max_batch_size)),
                                       _gpu_id(device), settings)

    def execute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._service is None:
            raise InferError.unavailable("model instance is not loaded")
        body_name, headers_name, response_name, meta_name = self._names
        body = inputs[body_name]
        bodies = _strings(body, body_name)
        headers = _headers(inputs.get(headers_name) if headers_name else None, len(bodies))
        results = self._service.predict(bodies, headers)
        response = np.empty(len(results), dtype=np.object_)
        response[:] = [payload for payload, _ in results]
        outputs = {response_name: response.reshape(body.shape)}
        if meta_name:
            meta = np.empty(len(results), dtype=np.object_)
            meta[:] = [json.dumps(info).encode("utf-8") for _, info in results]
            outputs[meta_name] = meta.reshape(body.shape)
        return outputs

    def unload(self) -> None:
        self._service = None  # the instance process ends right after; nothing else holds the handler
