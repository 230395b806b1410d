"""The SDK from a plain script: the README's example, with no `if __name__ == "__main__":` guard, serves a Python model.

A Python model runs in instance processes. Started through multiprocessing's spawn, each of them re-imported the
caller's `__main__` (a script file, or the module of `python -m`): the unguarded example ran again inside the child,
which tried to start a server of its own, died with multiprocessing's bootstrapping traceback and left `add_sub`
UNAVAILABLE. Each way of running Python code is tried here in a subprocess of its own: a script file, `python -m`,
`python -c` and code read from standard input (as a notebook kernel runs it: a `__main__` with no file).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TIMEOUT_S = 120

# The README's SDK example, on the example repository's Python model (Triton's add_sub). Its first line runs once
# per import of the module: printed twice, the instance process has re-run the caller's main module.
SDK_EXAMPLE = """\
print("example started", flush=True)
import numpy as np
import inferd

with inferd.Server(model_repository={repository!r}) as server:
    result = server.infer("add_sub", {{"INPUT0": np.array([1, 2, 3, 4], np.float32),
                                       "INPUT1": np.full(4, 0.5, np.float32)}})
    print("OUTPUT0", result.outputs["OUTPUT0"].tolist())
    print("OUTPUT1", result.outputs["OUTPUT1"].tolist())
"""


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example repository's add_sub, written by examples/build_repository.py's own function."""
    spec = importlib.util.spec_from_file_location("build_repository", EXAMPLES / "build_repository.py")
    assert spec is not None and spec.loader is not None
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    root = tmp_path_factory.mktemp("sdk-scripts") / "model_repository"
    builder.build_python_model(root, force=True)
    return root


def _run(how: str, code: str, folder: Path) -> subprocess.CompletedProcess[str]:
    (folder / "sdk_example.py").write_text(code)
    commands = {
        "script": ([sys.executable, "sdk_example.py"], None),
        "module": ([sys.executable, "-m", "sdk_example"], None),
        "-c": ([sys.executable, "-c", code], None),
        "stdin": ([sys.executable, "-"], code),
    }
    command, stdin = commands[how]
    return subprocess.run(command, input=stdin, cwd=folder, capture_output=True, text=True, timeout=TIMEOUT_S,
                          check=False)


@pytest.mark.parametrize("how", ["script", "module", "-c", "stdin"])
def test_sdk_example_without_main_guard(how: str, repository: Path, tmp_path: Path) -> None:
    done = _run(how, SDK_EXAMPLE.format(repository=str(repository)), tmp_path)
    report = f"exit code {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    assert done.returncode == 0, report
    assert "Traceback" not in done.stderr, report
    assert "UNAVAILABLE" not in done.stderr, report
    lines = done.stdout.splitlines()
    assert lines.count("example started") == 1, report  # the instance process did not run the example again
    assert "OUTPUT0 [1.5, 2.5, 3.5, 4.5]" in lines, report
    assert "OUTPUT1 [0.5, 1.5, 2.5, 3.5]" in lines, report
