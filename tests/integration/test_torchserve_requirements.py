"""TorchServe's per-model dependency install: an archive's `--requirements-file` gets the model an environment.

As TorchServe's `install_py_dep_per_model=true`: only when the model's config parameter `install_py_dep_per_model`
is "true", or the server runs with `TS_INSTALL_PY_DEP_PER_MODEL=true`. No network: the archive carries a wheel of
a tiny package, `inferd_ts_dep` (written here, see test_model_environments.py), as an extra file, and its
requirements file says `--no-index --find-links .` (relative: the extracted archive's folder). The handler imports
the package at the top, as handlers do, so without the install its load fails. `inferd_ts_dep.transform(x)` is
`x * 2 + 1` (version 2.0) on float32 values; the served JSON is compared exactly with numpy doing the same here.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from test_model_environments import write_wheel

from serving import ServerProcess, start_server

pytest.importorskip("torch")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

ARCHIVER = Path(sys.executable).parent / "torch-model-archiver"
DEP = "inferd_ts_dep"
ON = "ts_dep_on"  # Triton layout, config parameter install_py_dep_per_model "true"
OFF = "ts_dep_off"  # the same archive, no parameter: not installed (until TS_INSTALL_PY_DEP_PER_MODEL=true)
BAD = "ts_dep_bad"  # the parameter is neither "true" nor "false"
VARIABLE = "TS_INSTALL_PY_DEP_PER_MODEL"

HANDLER = f'''
import numpy as np

import {DEP}


def handle(data, context):
    if data is None:
        return None
    answers = []
    for row in data:
        x = np.asarray(row["body"]["x"], dtype=np.float32)
        answers.append({{"y": {DEP}.transform(x).tolist(), "version": {DEP}.VERSION}})
    return answers
'''

CONFIG = """backend: "torchserve"
parameters {{ key: "install_py_dep_per_model" value {{ string_value: "{value}" }} }}
"""


def _build(root: Path) -> Path:
    work, repo = root / "work", root / "models"
    (work / "wheels").mkdir(parents=True)
    write_wheel(work / "wheels", "2.0", DEP)
    (work / "dep_handler.py").write_text(HANDLER)
    (work / "requirements.txt").write_text(f"--no-index\n--find-links .\n{DEP}==2.0\n")
    (work / "unused.pt").write_bytes(b"")
    subprocess.run([str(ARCHIVER), "--model-name", "dep", "--version", "1.0", "--serialized-file", "unused.pt",
                    "--handler", "dep_handler.py", "--requirements-file", "requirements.txt",
                    "--extra-files", "wheels", "--export-path", str(work), "--force"],
                   check=True, cwd=work, capture_output=True)
    for name, config in ((ON, CONFIG.format(value="true")), (OFF, ""), (BAD, CONFIG.format(value="maybe"))):
        (repo / name / "1").mkdir(parents=True)
        (repo / name / "1" / "model.mar").write_bytes((work / "dep.mar").read_bytes())
        if config:
            (repo / name / "config.pbtxt").write_text(config)
    return repo


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("torchserve-requirements")
    return {"repo": _build(base), "envs": base / "envs", "cache": base / "cache", "logs": base}


def _start(setup: dict[str, Path], log_name: str, **env: str) -> ServerProcess:
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv(VARIABLE, raising=False)
        patch.setenv("INFERD_CACHE_DIR", str(setup["cache"]))
        return start_server(setup["repo"], setup["logs"] / log_name, "--strict-readiness=false",
                            "--model-env-dir", str(setup["envs"]), env=env)


@pytest.fixture(scope="module")
def server(setup: dict[str, Path]) -> Iterator[ServerProcess]:
    process = _start(setup, "first.log")
    yield process
    process.stop()


X = [1.5, -2.0, 0.25, 8.0]


def _predict(server: ServerProcess, model: str) -> httpx.Response:
    return httpx.post(f"{server.base_url}/predictions/{model}", json={"x": X}, timeout=60.0)


def _index(server: ServerProcess) -> dict[str, dict[str, Any]]:
    rows = httpx.post(f"{server.base_url}/v2/repository/index", json={}, timeout=10.0).json()
    return {row["name"]: row for row in rows}


def _assert_computed_by_the_package(response: httpx.Response) -> None:
    assert response.status_code == 200, response.text
    served = response.json()
    assert served["version"] == "2.0"
    expected = np.asarray(X, dtype=np.float32) * np.float32(2) + np.float32(1)
    assert served["y"] == expected.tolist()  # exact: the same float32 operations, JSON keeps them


def test_requirements_are_installed_when_asked(server: ServerProcess, setup: dict[str, Path]) -> None:
    _assert_computed_by_the_package(_predict(server, ON))
    log = server.log()
    assert f"model '{ON}': building a Python environment from" in log
    assert f"model '{ON}': pip: Successfully installed {DEP}-2.0" in log
    # pip read the extracted archive's requirements file and found the wheel beside it (`--find-links .`).
    assert str(setup["cache"] / "torchserve") in log
    assert len([p for p in setup["envs"].iterdir() if (p / "inferd-env.json").is_file()]) == 1


def test_without_the_switch_the_handler_import_fails(server: ServerProcess) -> None:
    row = _index(server)[OFF]
    assert row["state"] == "UNAVAILABLE"
    assert f"No module named '{DEP}'" in row["reason"]
    # TorchServe would not have registered a model whose handler does not import.
    response = _predict(server, OFF)
    assert response.status_code == 404
    assert response.json() == {"code": 404, "type": "ModelNotFoundException", "message": f"Model not found: {OFF}"}
    log = server.log()
    assert f"model '{OFF}': the archive's requirements.txt is not installed" in log
    assert f"'install_py_dep_per_model' to \"true\" or {VARIABLE}=true" in log
    assert _predict(server, ON).status_code == 200  # the others keep serving


def test_a_bad_switch_value_is_a_config_error(server: ServerProcess) -> None:
    row = _index(server)[BAD]
    assert row["state"] == "UNAVAILABLE"
    assert "install_py_dep_per_model" in row["reason"] and "'maybe'" in row["reason"]


def test_restart_reuses_the_environment_and_the_variable_turns_it_on(server: ServerProcess,
                                                                     setup: dict[str, Path]) -> None:
    _predict(server, ON)  # the first server has built its environment
    second = _start(setup, "second.log", **{VARIABLE: "true"})
    try:
        _assert_computed_by_the_package(_predict(second, ON))
        _assert_computed_by_the_package(_predict(second, OFF))  # server-wide switch: installed now
        log = second.log()
    finally:
        second.stop()
    assert [line for line in log.splitlines() if ": pip: " in line] == []
    assert log.count("built before from identical requirements") == 2  # ON and OFF: one archive, one environment
    assert len([p for p in setup["envs"].iterdir() if (p / "inferd-env.json").is_file()]) == 1
