"""Per-model Python dependencies: a `requirements.txt` gives a Python model a virtual environment of its own.

No network: the requirements point at wheels of a tiny package, `inferd_test_dep`, that this module writes itself
(versions 2.0 and 3.0), with `--no-index --find-links`. The server has version 1.0 of the same package on its own
`sys.path` (PYTHONPATH), so a model whose environment pins 2.0 seeing 2.0 shows that the model's requirements win,
and a model without requirements seeing 1.0 shows that the others still get the server's packages.
`inferd_test_dep.transform(x)` is `x * MAJOR + 1` (MAJOR: the package's major version), so the served outputs are
compared exactly with numpy doing the same float32 operations here.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import textwrap
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient

from clients import make_input
from inferd.instances.environments import EnvironmentBuildError, EnvironmentCache
from serving import ServerProcess, start_server

DEP = "inferd_test_dep"
SERVER_VERSION = "1.0"  # on the server's PYTHONPATH
PINNED = "env_pinned"  # model folder requirements.txt: inferd_test_dep==2.0
TWIN = "env_twin"  # the same requirements as PINNED: it shares PINNED's environment
VERSIONED = "env_versioned"  # version 1: the model folder's requirements (2.0); version 2: its own (3.0)
PLAIN = "env_plain"  # no requirements.txt: the server's inferd_test_dep 1.0
BROKEN = "env_broken"  # requires a version no wheel has: pip fails, only this model is UNAVAILABLE

MODEL_PY = """
    import numpy as np

    import inferd  # the server's packages are still importable from the model's environment
    import inferd_test_dep


    class DependentModel:
        inputs = [{"name": "X", "datatype": "FP32", "shape": [4]}]
        outputs = [
            {"name": "Y", "datatype": "FP32", "shape": [4]},
            {"name": "VERSION", "datatype": "BYTES", "shape": [1]},
        ]

        def predict(self, inputs):
            assert inferd.__version__
            return {"Y": inferd_test_dep.transform(inputs["X"]),
                    "VERSION": np.array([inferd_test_dep.VERSION.encode()], dtype=object)}
"""

VERSIONED_CONFIG = """
name: "env_versioned"
backend: "python"
version_policy: { all: { } }
input [ { name: "X" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [
  { name: "Y" data_type: TYPE_FP32 dims: [ 4 ] },
  { name: "VERSION" data_type: TYPE_STRING dims: [ 1 ] }
]
"""


def _module_source(version: str) -> str:
    major = int(version.split(".")[0])
    return (f"VERSION = {version!r}\n\n\ndef transform(x):\n"
            f"    return x * type(x.flat[0])({major}) + type(x.flat[0])(1)\n")


def _metadata(version: str, name: str = DEP) -> str:
    return f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"


def write_wheel(folder: Path, version: str, package: str = DEP) -> Path:
    """A pure-Python wheel (inferd_test_dep by default), written by hand: a zip with dist-info, no build backend."""
    info = f"{package}-{version}.dist-info"
    files = {f"{package}/__init__.py": _module_source(version), f"{info}/METADATA": _metadata(version, package),
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: inferd-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = []
    for name, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(text.encode())}")
    files[f"{info}/RECORD"] = "\n".join([*record, f"{info}/RECORD,,"]) + "\n"
    path = folder / f"{package}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        for name, text in files.items():
            wheel.writestr(name, text)
    return path


def write_installed(folder: Path, version: str) -> None:
    """inferd_test_dep as if installed into `folder` (what the server has on its path)."""
    (folder / DEP).mkdir(parents=True)
    (folder / DEP / "__init__.py").write_text(_module_source(version))
    (folder / f"{DEP}-{version}.dist-info").mkdir()
    (folder / f"{DEP}-{version}.dist-info" / "METADATA").write_text(_metadata(version))


def requirements(wheels: Path, pin: str, name: str = DEP) -> str:
    return f"--no-index\n--find-links {wheels}\n{name}=={pin}\n"


def write_model(repo: Path, name: str, model_requirements: str | None, *, config: str = "",
                versions: dict[int, str | None] | None = None) -> Path:
    """A Python model; `versions` maps each version to its own requirements.txt text (None: none)."""
    model_dir = repo / name
    for version, own in (versions or {1: None}).items():
        (model_dir / str(version)).mkdir(parents=True)
        (model_dir / str(version) / "model.py").write_text(textwrap.dedent(MODEL_PY))
        if own is not None:
            (model_dir / str(version) / "requirements.txt").write_text(own)
    if model_requirements is not None:
        (model_dir / "requirements.txt").write_text(model_requirements)
    if config:
        (model_dir / "config.pbtxt").write_text(config)
    return model_dir


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("wheels")
    for version in ("2.0", "3.0"):
        write_wheel(folder, version)
    return folder


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, wheels: Path) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("model-environments")
    repo = base / "models"
    write_model(repo, PINNED, requirements(wheels, "2.0"))
    write_model(repo, TWIN, requirements(wheels, "2.0"))
    write_model(repo, VERSIONED, requirements(wheels, "2.0"), config=VERSIONED_CONFIG,
                versions={1: None, 2: requirements(wheels, "3.0")})
    write_model(repo, PLAIN, None)
    write_model(repo, BROKEN, requirements(wheels, "9.9"))
    server_site = base / "server-site"
    write_installed(server_site, SERVER_VERSION)
    return {"repo": repo, "envs": base / "envs", "server_site": server_site, "logs": base}


def _start(setup: dict[str, Path], log_name: str) -> ServerProcess:
    with pytest.MonkeyPatch.context() as patch:
        path = os.environ.get("PYTHONPATH", "")
        patch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(setup["server_site"]), path) if p))
        return start_server(setup["repo"], setup["logs"] / log_name, "--strict-readiness=false",
                            "--model-env-dir", str(setup["envs"]))


@pytest.fixture(scope="module")
def server(setup: dict[str, Path]) -> Iterator[ServerProcess]:
    process = _start(setup, "first.log")
    yield process
    process.stop()


def _infer(server: ServerProcess, model: str, x: np.ndarray, version: str = "") -> tuple[np.ndarray, str]:
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        result = client.infer(model, [make_input(httpclient, "X", x, "FP32")], model_version=version)
    finally:
        client.close()
    version_out = result.as_numpy("VERSION")
    assert version_out is not None
    value = version_out.reshape(-1)[0]
    return result.as_numpy("Y"), value.decode() if isinstance(value, bytes) else str(value)


def _index(server: ServerProcess) -> list[dict[str, str]]:
    response = httpx.post(f"{server.base_url}/v2/repository/index", json={}, timeout=10.0)
    assert response.status_code == 200, response.text
    rows: list[dict[str, str]] = response.json()
    return rows


def _environments(envs: Path) -> list[Path]:
    """Finished environments in the cache folder (each has its completion marker)."""
    return sorted(p for p in envs.iterdir() if (p / "inferd-env.json").is_file())


X = np.array([1.5, -2.0, 0.25, 8.0], dtype=np.float32)


def expected(major: int) -> np.ndarray:
    return X * np.float32(major) + np.float32(1)


def test_model_sees_its_pinned_version_over_the_servers(server: ServerProcess) -> None:
    y, version = _infer(server, PINNED, X)
    assert version == "2.0"
    np.testing.assert_array_equal(y, expected(2))  # exact: the same float32 operations


def test_model_without_requirements_uses_the_servers_packages(server: ServerProcess) -> None:
    y, version = _infer(server, PLAIN, X)
    assert version == SERVER_VERSION
    np.testing.assert_array_equal(y, expected(1))


def test_version_folder_requirements_take_precedence(server: ServerProcess) -> None:
    y1, version1 = _infer(server, VERSIONED, X, "1")
    y2, version2 = _infer(server, VERSIONED, X, "2")
    assert (version1, version2) == ("2.0", "3.0")
    np.testing.assert_array_equal(y1, expected(2))
    np.testing.assert_array_equal(y2, expected(3))


def test_identical_requirements_share_one_environment(server: ServerProcess, setup: dict[str, Path]) -> None:
    assert _infer(server, TWIN, X)[1] == "2.0"
    # PINNED, TWIN and VERSIONED version 1 (2.0) share one; VERSIONED version 2 (3.0) has its own; BROKEN none.
    assert len(_environments(setup["envs"])) == 2
    log = server.log()
    assert log.count("building a Python environment") == 3  # 2.0, 3.0 and the failed 9.9
    assert log.count("built before from identical requirements") == 2


def test_failed_install_makes_only_that_model_unavailable(server: ServerProcess, setup: dict[str, Path]) -> None:
    rows = {(r["name"], r.get("version", "")): r for r in _index(server)}
    broken = rows[(BROKEN, "1")]
    assert broken["state"] == "UNAVAILABLE"
    assert "pip could not install" in broken["reason"]
    assert f"No matching distribution found for {DEP}==9.9" in broken["reason"]
    for name in (PINNED, TWIN, PLAIN):
        assert rows[(name, "1")]["state"] == "READY"
    assert _infer(server, PINNED, X)[1] == "2.0"  # the others keep serving
    # The failed build left nothing behind that a later start could take for an environment.
    assert all(p.suffix == ".lock" or (p / "inferd-env.json").is_file() for p in setup["envs"].iterdir())


def test_build_progress_is_logged(server: ServerProcess) -> None:
    log = server.log()
    assert f"model '{PINNED}': pip: Successfully installed {DEP}-2.0" in log or \
        f"model '{TWIN}': pip: Successfully installed {DEP}-2.0" in log
    assert "Python environment" in log and " ready in " in log
    # pip saw the server's copy, and left it alone: it lies outside the environment.
    assert "Not uninstalling" in log


def test_restart_reuses_the_environments(server: ServerProcess, setup: dict[str, Path]) -> None:
    _infer(server, PINNED, X)  # the first server has built everything it could
    built = _environments(setup["envs"])
    second = _start(setup, "second.log")
    try:
        assert _infer(second, PINNED, X)[1] == "2.0"
        assert _infer(second, VERSIONED, X, "2")[1] == "3.0"
        log = second.log()
    finally:
        second.stop()
    assert _environments(setup["envs"]) == built
    assert log.count("built before from identical requirements") == 4  # PINNED, TWIN, VERSIONED 1 and 2
    pip_lines = [line for line in log.splitlines() if ": pip: " in line and BROKEN not in line]
    assert pip_lines == []  # only the model whose install failed runs pip again


# ---- the cache itself, in this process ----


@pytest.fixture
def simple_requirements(tmp_path: Path, wheels: Path) -> Path:
    path = tmp_path / "model" / "requirements.txt"
    path.parent.mkdir()
    path.write_text(requirements(wheels, "3.0"))
    return path


def test_concurrent_builds_build_once(tmp_path: Path, simple_requirements: Path,
                                      caplog: pytest.LogCaptureFixture) -> None:
    cache = EnvironmentCache(tmp_path / "envs")
    results: list[Path] = []
    errors: list[BaseException] = []

    def build() -> None:
        try:
            results.append(cache.ensure(simple_requirements, "concurrent").path)
        except BaseException as exc:  # reported below
            errors.append(exc)

    with caplog.at_level(logging.INFO, logger="inferd.instances.environments"):
        threads = [threading.Thread(target=build) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
    assert errors == []
    assert len(set(results)) == 1 and len(results) == 3
    assert sum("building a Python environment" in r.getMessage() for r in caplog.records) == 1
    assert sum("built before" in r.getMessage() for r in caplog.records) == 2


def test_unfinished_environment_is_rebuilt(tmp_path: Path, simple_requirements: Path) -> None:
    cache = EnvironmentCache(tmp_path / "envs")
    environment = cache.ensure(simple_requirements)
    record = json.loads((environment.path / "inferd-env.json").read_text())
    assert record["site_dirs"] == list(environment.site_dirs)
    # As if the server had died in the middle of a build: files there, no completion marker.
    (environment.path / "inferd-env.json").unlink()
    (environment.path / "half-written").write_text("")
    again = cache.ensure(simple_requirements)
    assert again.path == environment.path
    assert not (again.path / "half-written").exists()
    assert (again.path / "inferd-env.json").is_file()
    site_packages = Path(again.site_dirs[0])
    assert (site_packages / DEP / "__init__.py").read_text().startswith("VERSION = '3.0'")


def test_failed_build_raises_pips_error(tmp_path: Path, wheels: Path) -> None:
    path = tmp_path / "requirements.txt"
    path.write_text(requirements(wheels, "9.9"))
    cache = EnvironmentCache(tmp_path / "envs")
    with pytest.raises(EnvironmentBuildError, match=f"No matching distribution found for {DEP}==9.9"):
        cache.ensure(path)
    assert [p.suffix for p in (tmp_path / "envs").iterdir()] == [".lock"]


def test_environment_copy_of_a_module_the_server_imported_is_reported(tmp_path: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    """inferd imports numpy in the instance process before the model's environment comes first: say so."""
    write_wheel(tmp_path, "0.0.1", "numpy")  # a stand-in numpy that only this environment holds
    path = tmp_path / "requirements.txt"
    path.write_text(requirements(tmp_path, "0.0.1", "numpy"))
    with caplog.at_level(logging.WARNING, logger="inferd.instances.environments"):
        environment = EnvironmentCache(tmp_path / "envs").ensure(path, "shadow")
    assert (Path(environment.site_dirs[0]) / "numpy" / "__init__.py").is_file()
    assert np.__version__ != "0.0.1"  # the server's numpy was left alone
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("installs numpy" in w and "server's copy" in w for w in warnings), warnings
