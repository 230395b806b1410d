"""Backend registry: maps Triton's `backend` / `platform` names and model files to backend classes.

Backend modules are imported only when a model needs them, so a missing optional runtime only affects its models.

Other packages add backends without touching inferd through the entry-point group `inferd.backends`: each entry
point's name is the backend name (what `backend:` in a config says) and its object is either a `BackendSpec` or a
class that follows the Backend contract, with optional class attributes `default_filename`, `other_filenames`
(model files that mean this backend when no config names one) and `platforms`. They are read once, when the first
model that no built-in backend answers is resolved; a plugin cannot replace a built-in backend name.
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import ConfigError, ModelConfig
from .base import Backend

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

__all__ = ["BACKENDS", "ENTRY_POINT_GROUP", "Backend", "BackendSpec", "create_backend", "load_plugins",
           "resolve_backend"]

log = logging.getLogger("inferd.backends")

ENTRY_POINT_GROUP = "inferd.backends"
_CONTRACT = ("autocomplete", "load", "execute", "unload")


class BackendSpec:
    """Where a backend class lives and which files and platform names belong to it."""

    def __init__(self, target: str, default_filename: str, platforms: tuple[str, ...] = (),
                 other_filenames: tuple[str, ...] = ()) -> None:
        self.target = target
        self.default_filename = default_filename
        self.platforms = platforms
        # Further model files that also mean this backend when no config names one (PyTorch's model.pt2; a pattern
        # such as "*.mar": any file it matches). An empty default_filename: no file means this backend (it must be
        # named in the config).
        self.filenames = tuple(name for name in (default_filename, *other_filenames) if name)

    def load_class(self) -> Callable[[], Backend]:
        module_name, _, attr = self.target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ConfigError(f"backend module {module_name} cannot be imported: {exc}") from None
        return getattr(module, attr)


# Order matters where no config names the backend: the first whose file is present wins (an MLflow folder may
# also hold a model.pkl, so MLflow comes before scikit-learn).
BACKENDS: dict[str, BackendSpec] = {
    "onnxruntime": BackendSpec("inferd.backends.onnxruntime:OnnxRuntimeBackend", "model.onnx", ("onnxruntime_onnx",)),
    "pytorch": BackendSpec("inferd.backends.pytorch:PyTorchBackend", "model.pt", ("pytorch_libtorch",), ("model.pt2",)),
    "tensorflow": BackendSpec("inferd.backends.tensorflow:TensorFlowBackend", "model.savedmodel",
                              ("tensorflow_savedmodel",)),
    # TorchServe model archives (MANIFEST.json + serialized model + handler), run by their handler: model.mar, or
    # the one `<name>.mar` a version folder holds (the archiver's own file name, as a model store has it).
    "torchserve": BackendSpec("inferd.backends.torchserve:TorchServeBackend", "model.mar", (), ("*.mar",)),
    "mlflow": BackendSpec("inferd.backends.mlflow:MlflowBackend", "MLmodel"),
    # Classic ML (FIL's tensor names input__0 / output__0); `parameters { key: "method" ... }` picks predict_proba.
    "sklearn": BackendSpec("inferd.backends.sklearn:SklearnBackend", "model.joblib", (), ("model.pkl",)),
    "xgboost": BackendSpec("inferd.backends.xgboost:XGBoostBackend", "model.json", (), ("model.ubj",)),
    "lightgbm": BackendSpec("inferd.backends.lightgbm:LightGBMBackend", "model.txt"),
    # Triton's FIL backend configs (`model_type` xgboost_ubj / xgboost_json / xgboost / lightgbm) on the two above.
    "fil": BackendSpec("inferd.backends.fil:FilBackend", "xgboost.ubj", (), ("xgboost.json", "xgboost.model")),
    # Python models: inferd's own class API and Triton's python backend (TritonPythonModel), in instance processes.
    "python": BackendSpec("inferd.backends.python:PythonBackend", "model.py"),
    # A Seldon language-wrapper class, registered by `inferd microservice` (never found by a file on disk).
    "seldon": BackendSpec("inferd.backends.seldon:SeldonBackend", ""),
}


_plugins_lock = threading.Lock()
_plugins_loaded = False


def _plugin_spec(entry_point: EntryPoint, obj: object) -> BackendSpec:
    if isinstance(obj, BackendSpec):
        return obj
    if not isinstance(obj, type):
        raise TypeError(f"{entry_point.value} is neither a BackendSpec nor a backend class")
    missing = [name for name in (*_CONTRACT, "releases_gil") if not hasattr(obj, name)]
    if missing:
        raise TypeError(f"{entry_point.value} does not follow the Backend contract (missing {', '.join(missing)})")
    target = f"{obj.__module__}:{obj.__qualname__}"
    return BackendSpec(target, str(getattr(obj, "default_filename", "")), tuple(getattr(obj, "platforms", ())),
                       tuple(getattr(obj, "other_filenames", ())))


def load_plugins() -> None:
    """Add the backends that installed packages declare in the `inferd.backends` entry-point group (once)."""
    global _plugins_loaded
    with _plugins_lock:
        if _plugins_loaded:
            return
        _plugins_loaded = True
        from importlib.metadata import entry_points  # only here: reading every package's metadata costs

        for entry_point in entry_points(group=ENTRY_POINT_GROUP):
            if entry_point.name in BACKENDS:
                log.warning("backend plugin '%s' (%s) ignored: a built-in backend has that name", entry_point.name,
                            entry_point.value)
                continue
            try:
                spec = _plugin_spec(entry_point, entry_point.load())
            except Exception as exc:  # a broken plugin costs its own models, never the server
                log.error("backend plugin '%s' (%s) cannot be used: %s: %s", entry_point.name, entry_point.value,
                          type(exc).__name__, exc)
                continue
            BACKENDS[entry_point.name] = spec
            log.info("backend plugin '%s' from %s", entry_point.name, spec.target)


def resolve_backend(config: ModelConfig, model_dir: Path, version_dirs: list[Path]) -> str:
    """The backend name for a model: from `backend`, from `platform`, or from the files present."""
    return backend_for(config, lambda filename: any(_present(d, filename) for d in version_dirs))


def _present(folder: Path, filename: str) -> bool:
    """Whether a version folder holds `filename`, or for a pattern (`*.mar`) a file that matches it (not hidden)."""
    if "*" not in filename:
        return (folder / filename).exists()
    try:
        return any(p.is_file() and not p.name.startswith(".") for p in folder.glob(filename))
    except OSError:
        return False


def backend_for(config: ModelConfig, has_file: Callable[[str], bool]) -> str:
    """The backend name from `backend`, from `platform`, or from the model files a version folder holds
    (`has_file(name)`: on disk for a repository, among the uploaded names for a load request's files)."""
    # Built-in backends come first and keep their names, so one they answer is the answer with plugins too: the
    # installed packages' entry points (a scan of every distribution) are read when a model needs them.
    try:
        return _backend_for(config, has_file)
    except ConfigError:
        load_plugins()  # once; another thread's scan under way is waited for
    return _backend_for(config, has_file)


def _backend_for(config: ModelConfig, has_file: Callable[[str], bool]) -> str:
    if config.backend:
        if config.backend not in BACKENDS:
            raise ConfigError(f"unknown backend '{config.backend}' (known: {', '.join(sorted(BACKENDS))})")
        return config.backend
    if config.platform:
        for name, spec in tuple(BACKENDS.items()):  # a copy: plugins may be added meanwhile
            if config.platform in spec.platforms:
                return name
        raise ConfigError(f"unknown platform '{config.platform}'")
    for name, spec in tuple(BACKENDS.items()):  # a copy: plugins may be added meanwhile
        filenames = [config.default_model_filename] if config.default_model_filename else spec.filenames
        if any(filename and has_file(filename) for filename in filenames):
            return name
    raise ConfigError("config specifies no 'backend' or 'platform' and no known model file was found")


def create_backend(name: str) -> Backend:
    if name not in BACKENDS:
        load_plugins()
    return BACKENDS[name].load_class()()
