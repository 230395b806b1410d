"""`inferd repo init`: a model file as a repository folder, `REPO/NAME/1/<the backend's file name>`, with the
auto-completed config written out as `REPO/NAME/config.pbtxt` (so it can be read and edited)."""

from __future__ import annotations

import shutil
from pathlib import Path

from ..backends import BACKENDS, load_plugins
from ..config import CONFIG_FILENAME
from ..manager import ModelManager, check_model_name
from ..repository import ModelRepository
from ..types import InferError
from .show import render_config

__all__ = ["init_model"]

# Folders that are one model: what marks them, and the name they take in the version folder ("": their files go
# into the version folder as they are).
_FOLDER_MODELS = (("saved_model.pb", "model.savedmodel"), ("MLmodel", ""))


def _target_name(source: Path) -> str:
    """The file name the model takes in its version folder: the one a backend looks for."""
    load_plugins()
    if source.is_dir():
        for marker, target in _FOLDER_MODELS:
            if (source / marker).is_file():
                return target
        raise ValueError(f"{source} is a folder, but neither a SavedModel nor an MLflow model")
    for spec in BACKENDS.values():
        if source.name in spec.filenames:
            return source.name
    for spec in BACKENDS.values():
        for filename in spec.filenames:
            if "*" not in filename and Path(filename).suffix == source.suffix and source.suffix:
                return filename
    if source.suffix == ".mar":
        return source.name
    known = sorted({Path(f).suffix for spec in BACKENDS.values() for f in spec.filenames if Path(f).suffix})
    raise ValueError(f"no backend serves '{source.name}' (model files end in {', '.join(known)})")


def init_model(source: Path, name: str, repository: Path) -> Path:
    """Write the model folder and its config; the config file's path. ValueError (one line) when it cannot."""
    try:
        check_model_name(name)
    except InferError as exc:
        raise ValueError(exc.message) from None
    if not source.exists():
        raise ValueError(f"{source} does not exist")
    target = _target_name(source)
    folder = repository / name
    if folder.exists():
        raise ValueError(f"{folder} exists already: pick another --name or remove it")
    version = folder / "1"
    version.mkdir(parents=True)
    try:
        if source.is_dir():
            shutil.copytree(source, version / target if target else version, dirs_exist_ok=True)
        else:
            shutil.copy2(source, version / target)
        config = ModelManager(ModelRepository([repository])).complete_config(name, folder, None)[0]
    except Exception as exc:
        shutil.rmtree(folder, ignore_errors=True)
        reason = exc.message if isinstance(exc, InferError) else str(exc)
        raise ValueError(f"cannot complete a config from {source}: {reason}") from None
    path = folder / CONFIG_FILENAME
    path.write_text(render_config(config, "pbtxt"), encoding="utf-8")
    return path
