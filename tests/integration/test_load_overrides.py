"""A load request's `file:` overrides live in a temp-dir folder of their own (`inferd-load-*`) only while versions
serve from them: the folder goes on unload, on a reload once the new version serves, on a failed load, and when
the server closes. Counted with the temp dir pointed at a test folder (in-process, and `inferd serve` over HTTP)."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient

import inferd
from inferd.types import InferError
from models import SIMPLE, add_constant_model, add_simple
from serving import start_server

ADDER = "adder"
WAIT_S = 30.0  # a reload retires the old versions off the caller's thread (after a short grace period)


def _adder_config(name: str = ADDER) -> dict[str, Any]:
    tensor = {"data_type": "TYPE_INT32", "dims": [-1]}
    return {"name": name, "backend": "onnxruntime", "max_batch_size": 8,
            "input": [{"name": "INPUT0", **tensor}], "output": [{"name": "OUTPUT0", **tensor}]}


def _folders(tmp: Path) -> list[Path]:
    return sorted(p for p in tmp.iterdir() if p.name.startswith("inferd-load-"))


def _wait_for_folders(tmp: Path, count: int) -> list[Path]:
    deadline = time.monotonic() + WAIT_S
    while len(found := _folders(tmp)) != count:
        assert time.monotonic() < deadline, f"expected {count} inferd-load-* folder(s), found {found}"
        time.sleep(0.05)
    return found


@pytest.fixture
def load_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The temp dir the server writes load folders into (tempfile's, as TMPDIR sets it for a new process)."""
    folder = tmp_path / "server-tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    add_simple(root)
    return root


def _adds(server: inferd.Server, name: str, constant: int) -> None:
    x = np.array([[1, 2, 3]], dtype=np.int32)
    np.testing.assert_array_equal(server.infer(name, {"INPUT0": x}).outputs["OUTPUT0"], x + constant)


def test_load_reload_unload_leave_no_folder(repo: Path, load_tmp: Path) -> None:
    with inferd.Server(repo, model_control_mode="explicit") as server:
        server.load(ADDER, _adder_config(), {"1/model.onnx": add_constant_model(1)})
        [first] = _wait_for_folders(load_tmp, 1)
        assert (first / ADDER / "1" / "model.onnx").is_file()
        _adds(server, ADDER, 1)

        # A reload: the new folder serves, the old one goes once the old version is retired.
        server.load(ADDER, _adder_config(), {"1/model.onnx": add_constant_model(2)})
        _adds(server, ADDER, 2)
        [second] = _wait_for_folders(load_tmp, 1)
        assert second != first and not first.exists()

        server.unload(ADDER)
        _wait_for_folders(load_tmp, 0)
        assert not server.model_ready(ADDER)


def test_failed_loads_leave_no_folder(repo: Path, load_tmp: Path) -> None:
    with inferd.Server(repo, model_control_mode="explicit") as server:
        # A first load whose version fails (the model file is not ONNX) ...
        with pytest.raises(InferError, match=f"failed to load '{ADDER}'"):
            server.load(ADDER, _adder_config(), {"1/model.onnx": b"not an onnx model"})
        assert _folders(load_tmp) == [] and not server.model_ready(ADDER)
        # ... and one that fails before any version loads (no model file to auto-complete from).
        with pytest.raises(InferError, match=f"failed to load '{ADDER}'"):
            server.load(ADDER, None, {"config.pbtxt": b'backend: "onnxruntime"', "1/other.bin": b"x"})
        assert _folders(load_tmp) == [] and not server.model_ready(ADDER)

        # Failed reloads keep what serves, and its folder, and leave nothing of their own.
        server.load(ADDER, _adder_config(), {"1/model.onnx": add_constant_model(3)})
        [serving] = _folders(load_tmp)
        with pytest.raises(InferError):
            server.load(ADDER, _adder_config(), {"1/model.onnx": b"not an onnx model"})
        with pytest.raises(InferError):
            server.load(ADDER, None, {"config.pbtxt": b'backend: "onnxruntime"', "1/other.bin": b"x"})
        assert _folders(load_tmp) == [serving]
        _adds(server, ADDER, 3)
    assert _folders(load_tmp) == []  # closing the server removes what still served


def test_reload_from_the_repository_drops_the_override(repo: Path, load_tmp: Path) -> None:
    """Files given for a repository model, then a plain reload of it: its override folder goes."""
    with inferd.Server(repo, model_control_mode="explicit", load_models=[SIMPLE]) as server:
        server.load(SIMPLE, _adder_config(SIMPLE), {"1/model.onnx": add_constant_model(5)})
        _wait_for_folders(load_tmp, 1)
        _adds(server, SIMPLE, 5)
        server.load(SIMPLE)  # from the repository again
        _wait_for_folders(load_tmp, 0)
        a = np.ones((1, 16), dtype=np.int32)
        np.testing.assert_array_equal(server.infer(SIMPLE, {"INPUT0": a, "INPUT1": a}).outputs["OUTPUT0"], a + a)


def test_served_over_http_with_tmpdir(repo: Path, tmp_path: Path, server_log: Path) -> None:
    """`inferd serve` with TMPDIR set: load, reload, failed load, unload and stop, counted in that folder."""
    tmp = tmp_path / "serve-tmp"
    tmp.mkdir()
    process = start_server(repo, server_log, "--model-control-mode=explicit", env={"TMPDIR": str(tmp)})
    http = httpclient.InferenceServerClient(process.http_url)
    config = json.dumps(_adder_config())
    try:
        http.load_model(ADDER, config=config, files={"file:1/model.onnx": add_constant_model(1)})
        [first] = _wait_for_folders(tmp, 1)
        http.load_model(ADDER, config=config, files={"file:1/model.onnx": add_constant_model(2)})
        [second] = _wait_for_folders(tmp, 1)
        assert second != first
        with pytest.raises(httpclient.InferenceServerException):
            http.load_model(ADDER, config=config, files={"file:1/model.onnx": b"not an onnx model"})
        assert _folders(tmp) == [second]
        with pytest.raises(httpclient.InferenceServerException):
            http.load_model("other", config=json.dumps(_adder_config("other")),
                            files={"file:1/model.onnx": b"not an onnx model"})
        assert _folders(tmp) == [second]
        http.unload_model(ADDER)
        _wait_for_folders(tmp, 0)
        http.load_model(ADDER, config=config, files={"file:1/model.onnx": add_constant_model(3)})
        _wait_for_folders(tmp, 1)
    finally:
        http.close()
        process.stop()
    assert _folders(tmp) == []  # the server removed what still served when it stopped
