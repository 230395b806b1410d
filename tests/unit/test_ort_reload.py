"""ONNX Runtime's optimized graph kept for a model scaled to zero: the next load uses it and answers the same; a
model file changed since is loaded (and optimized) afresh."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from inferd.backends import _ort_reload
from inferd.backends.onnxruntime import OnnxRuntimeBackend, session_options
from inferd.config import parse_config
from scaling_models import lookup_config, lookup_model


def _loaded(files: Path) -> OnnxRuntimeBackend:
    config = parse_config(lookup_config("table"))
    backend = OnnxRuntimeBackend()
    backend.autocomplete(config, files)
    backend.load(config, files, "cpu")
    return backend


def test_the_next_load_uses_the_optimized_graph_and_answers_the_same(tmp_path: Path) -> None:
    files = tmp_path / "1"
    files.mkdir()
    (files / "model.onnx").write_bytes(lookup_model(1, seed=5))
    first = _loaded(files)
    before = first.execute({"INDEX": np.array([7])})
    options = session_options(parse_config(lookup_config("table")))
    assert _ort_reload.find(files / "model.onnx", options) is None
    first.prepare_reload()
    first.unload()
    saved = _ort_reload.find(files / "model.onnx", options)
    assert saved is not None and saved.exists()
    again = OnnxRuntimeBackend()
    again.load(parse_config(lookup_config("table")), files, "cpu")
    assert again.execute({"INDEX": np.array([7])}) == before == {"VALUE": np.array([12.0], dtype=np.float32)}

    (files / "model.onnx").write_bytes(lookup_model(1, seed=50))  # changed: the saved graph no longer applies
    stat = (files / "model.onnx").stat()
    os.utime(files / "model.onnx", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert _ort_reload.find(files / "model.onnx", options) is None
    assert _loaded(files).execute({"INDEX": np.array([7])})["VALUE"].tolist() == [57.0]
