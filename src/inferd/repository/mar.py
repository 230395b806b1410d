"""TorchServe's model-store layout in a repository: a bare `<name>.mar` is model `<name>`, version 1.

The rest of the server knows only Triton's layout (`<model>/<version>/<file>`), so each bare archive gets a model
folder of its own in the cache, `<cache>/mar-store/<hash of the repository path>/<name>/1/model.mar`, a symbolic
link to the archive (a copy where links cannot be made). Polling sees a changed archive through the link (its size
and time are the archive's); a removed archive is no longer listed, so its model is unloaded.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from pathlib import Path

from .cache import default_cache_dir

__all__ = ["MAR_SUFFIX", "is_bare_mar", "mar_model_folder"]

MAR_SUFFIX = ".mar"


def is_bare_mar(entry: Path) -> bool:
    return entry.suffix == MAR_SUFFIX and len(entry.name) > len(MAR_SUFFIX) and not entry.name.startswith(".") \
        and entry.is_file()


def mar_model_folder(archive: Path) -> Path:
    """The model folder standing for a bare archive in its repository (made or brought up to date now)."""
    real = archive.resolve()
    key = hashlib.sha256(str(real.parent).encode("utf-8")).hexdigest()[:16]
    model_dir = default_cache_dir() / "mar-store" / key / archive.name[: -len(MAR_SUFFIX)]
    link = model_dir / "1" / "model.mar"
    with contextlib.suppress(OSError):
        if link.is_symlink() and Path(os.readlink(link)) == real:
            return model_dir
    link.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        link.unlink()
    try:
        link.symlink_to(real)
    except OSError:  # no symbolic links here (Windows without the right): a copy, refreshed when it differs
        shutil.copy2(real, link)
    return model_dir
