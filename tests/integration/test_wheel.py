"""`pip wheel . --no-deps` makes a wheel that installs into a fresh virtual environment and serves from there.

The wheel is built from a copy of the project's sources (pyproject.toml, README.md, LICENSE, src/), so the build
leaves nothing in the working tree. It is built without build isolation: the build backend (setuptools) comes from
the test's own environment, so the test needs no network. The fresh venv gets the wheel with `--no-deps`; the
dependencies it needs are this environment's, made visible by a .pth file written after the install, so they come
last on sys.path and `import inferd` must resolve to the wheel's copy, never to the editable checkout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from models import add_simple
from serving import HOST, ServerProcess

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 300


def _run(*command: str | Path, cwd: Path | None = None) -> str:
    done = subprocess.run([str(c) for c in command], cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT_S,
                          check=False)
    assert done.returncode == 0, f"{command}\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = tmp_path_factory.mktemp("wheel-source")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    out = tmp_path_factory.mktemp("wheelhouse")
    log = _run(sys.executable, "-m", "pip", "wheel", "-v", ".", "--no-deps", "--no-build-isolation", "-w", out,
               cwd=source)
    # The license is an SPDX expression: setuptools has nothing to warn about (it did for a TOML table).
    assert "adding license file 'LICENSE'" in log, log[-4000:]  # the backend's own output is in the log
    assert "project.license" not in log and "License classifiers are deprecated" not in log, log[-4000:]
    (built,) = out.glob("inferd-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding the wheel, with this environment's packages after its own on sys.path."""
    root = tmp_path_factory.mktemp("fresh") / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", root)
    python = root / "bin" / "python"
    _run(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", wheel)
    site = Path(_run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").strip())
    (site / "zz_outer_environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return root


def test_wheel_holds_the_package_data(wheel: Path) -> None:
    """Every file under src/ that is not Python source (the OpenAPI document, the /docs page, ...) is in the wheel,
    and so are both packages, the `inferd` command and the license."""
    names = set(zipfile.ZipFile(wheel).namelist())
    data = [path.relative_to(ROOT / "src").as_posix() for path in (ROOT / "src").rglob("*")
            if path.is_file() and path.suffix not in (".py", ".pyc") and "__pycache__" not in path.parts
            and not any(part.endswith(".egg-info") for part in path.parts)]
    assert "inferd/frontends/http/openapi.json" in data and "inferd/frontends/http/docs.html" in data
    assert {"inferd/ui/dashboard.html", "inferd/ui/dashboard.js", "inferd/ui/dashboard.css"} <= set(data)
    assert [name for name in data if name not in names] == []
    assert {"inferd/__init__.py", "inferd/cli.py", "triton_python_backend_utils/__init__.py"} <= names
    metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
    text = zipfile.ZipFile(wheel).read(metadata).decode()
    assert "License-Expression: Apache-2.0" in text
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert any(n.endswith(".dist-info/entry_points.txt") for n in names)


def test_fresh_venv_imports_the_wheel_not_the_checkout(venv: Path) -> None:
    where = _run(venv / "bin" / "python", "-c", "import inferd, triton_python_backend_utils as u; "
                 "print(inferd.__file__); print(u.__file__)").split()
    assert all(Path(path).resolve().is_relative_to(venv.resolve()) for path in where), where


class WheelServer(ServerProcess):
    """`inferd serve` from the fresh venv's own `inferd` script, on ports the system picks."""

    def __init__(self, inferd: Path, repository: Path, log_path: Path) -> None:
        args = [str(inferd), "serve", "--model-repository", str(repository), "--http-port", "0", "--grpc-port", "0",
                "--metrics-port", "0", "--http-address", HOST, "--grpc-address", HOST]
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        self._start(args, log_path, {**env, "PYTHONUNBUFFERED": "1"}, log_path.parent)


@pytest.fixture
def wheel_server(venv: Path, tmp_path: Path) -> Iterator[WheelServer]:
    repository = tmp_path / "models"
    add_simple(repository)
    process = WheelServer(venv / "bin" / "inferd", repository, tmp_path / "inferd.log")
    try:
        process.wait_live()
        yield process
    finally:
        process.stop()


def test_the_wheel_serves(wheel_server: WheelServer) -> None:
    base = wheel_server.base_url
    assert httpx.get(f"{base}/v2/health/ready", timeout=30).status_code == 200
    a = np.arange(16, dtype=np.int32)
    body = {"inputs": [{"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "data": a.tolist()},
                       {"name": "INPUT1", "datatype": "INT32", "shape": [1, 16], "data": [1] * 16}]}
    answer = httpx.post(f"{base}/v2/models/simple/infer", json=body, timeout=30)
    assert answer.status_code == 200, answer.text
    outputs = {o["name"]: o["data"] for o in answer.json()["outputs"]}
    assert outputs["OUTPUT0"] == (a + 1).tolist() and outputs["OUTPUT1"] == (a - 1).tolist()
    # The package data came with the wheel: the OpenAPI document and the page that shows it.
    assert httpx.get(f"{base}/openapi.json", timeout=30).json()["openapi"].startswith("3.")
    assert httpx.get(f"{base}/docs", timeout=30).status_code == 200
