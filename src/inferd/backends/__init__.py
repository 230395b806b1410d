"""Backend registry: maps Triton's `backend` / `platform` names and model files to backend classes.

Backend modules are imported only when a model needs them, so a missing optional runtime only affects its models.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

from ..config import ConfigError, ModelConfig
from .base import Backend

__all__ = ["BACKENDS", "Backend", "BackendSpec", "create_backend", "resolve_backend"]


class BackendSpec:
    """Where a backend class lives and which files and platform names belong to it."""

    def __init__(self, target: str, default_filename: str, platforms: tuple[str, ...] = (),
                 other_filenames: tuple[str, ...] = ()) -> None:
        self.target = target
        self.default_filename = default_filename
        self.platforms = platforms
        # Further model files that also mean this backend when no config names one (PyTorch's model.pt2).
        self.filenames = (default_filename, *other_filenames)

    def load_class(self) -> Callable[[], Backend]:
        module_name, _, attr = self.target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ConfigError(f"backend module {module_name} cannot be imported: {exc}") from None
        return getattr(module, attr)


BACKENDS: dict[str, BackendSpec] = {
    "onnxruntime": BackendSpec("inferd.backends.onnxruntime:OnnxRuntimeBackend", "model.onnx", ("onnxruntime_onnx",)),
    "pytorch": BackendSpec("inferd.backends.pytorch:PyTorchBackend", "model.pt", ("pytorch_libtorch",), ("model.pt2",)),
    # Classic ML (FIL's tensor names input__0 / output__0); `parameters { key: "method" ... }` picks predict_proba.
    "sklearn": BackendSpec("inferd.backends.sklearn:SklearnBackend", "model.joblib", (), ("model.pkl",)),
    "xgboost": BackendSpec("inferd.backends.xgboost:XGBoostBackend", "model.json", (), ("model.ubj",)),
    "lightgbm": BackendSpec("inferd.backends.lightgbm:LightGBMBackend", "model.txt"),
}


def resolve_backend(config: ModelConfig, model_dir: Path, version_dirs: list[Path]) -> str:
    """The backend name for a model: from `backend`, from `platform`, or from the files present."""
    if config.backend:
        if config.backend not in BACKENDS:
            raise ConfigError(f"unknown backend '{config.backend}' (known: {', '.join(sorted(BACKENDS))})")
        return config.backend
    if config.platform:
        for name, spec in BACKENDS.items():
            if config.platform in spec.platforms:
                return name
        raise ConfigError(f"unknown platform '{config.platform}'")
    for name, spec in BACKENDS.items():
        filenames = [config.default_model_filename] if config.default_model_filename else spec.filenames
        if any((d / filename).exists() for d in version_dirs for filename in filenames):
            return name
    raise ConfigError("config specifies no 'backend' or 'platform' and no known model file was found")


def create_backend(name: str) -> Backend:
    return BACKENDS[name].load_class()()
