"""ONNX Runtime's optimized graph, kept for a model that is unloaded to be loaded again (scaled to zero).

Creating a session spends most of its time optimizing the graph (a 100 MB ResNet-50: seconds, against well under
one to load the optimized graph as it is). Before such a model's instances go, `save` writes the optimized graph
once (ORT's `optimized_model_filepath`, off the request path); `find` gives it to the next load, which skips the
optimizations. Only for CPU sessions (ORT's saved graph fits the machine it was optimized on), for models in one
file, and while the model file is unchanged (its path, size and modification time are the key). The copies live
in a temporary folder of this process, removed when it exits.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import os
import shutil
import tempfile
import threading
from pathlib import Path

import onnxruntime as ort

_MAX_BYTES = 1 << 30  # a saved graph holds its weights inline: well under protobuf's 2 GB
_saved: dict[tuple[str, int, int, int], Path] = {}
_lock = threading.Lock()
_folder: Path | None = None


def _key(path: Path, level: ort.GraphOptimizationLevel) -> tuple[str, int, int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return str(path.resolve()), stat.st_size, stat.st_mtime_ns, int(level)


def _cache_folder() -> Path:
    global _folder
    with _lock:
        if _folder is None:
            _folder = Path(tempfile.mkdtemp(prefix="inferd-ort-optimized-"))
            atexit.register(shutil.rmtree, _folder, True)
        return _folder


def find(path: Path, options: ort.SessionOptions) -> Path | None:
    """The saved optimized graph of this model file (unchanged since), or None."""
    if not _saved:
        return None
    key = _key(path, options.graph_optimization_level)
    saved = _saved.get(key) if key is not None else None
    return saved if saved is not None and saved.exists() else None


def save(path: Path, options: ort.SessionOptions, providers: list[str]) -> None:
    """Write the model's optimized graph (a session made only to write it) unless it is saved already."""
    if providers != ["CPUExecutionProvider"] or len(list(path.parent.iterdir())) > 1:
        return  # an accelerator's graph, or external data beside the model file
    key = _key(path, options.graph_optimization_level)
    if key is None or key[1] > _MAX_BYTES or find(path, options) is not None:
        return
    target = _cache_folder() / f"{hashlib.sha256(repr(key).encode()).hexdigest()[:24]}.onnx"
    partial = target.with_suffix(".part")
    options.optimized_model_filepath = str(partial)
    try:
        ort.InferenceSession(str(path), options, providers=providers)
        os.replace(partial, target)
    except Exception:  # nothing lost: the next load optimizes the graph itself
        with contextlib.suppress(OSError):
            partial.unlink()
        return
    _saved[key] = target
