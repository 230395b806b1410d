"""Per-model Python environments: a `requirements.txt` next to a Python model gets it a virtual environment.

Where the file is read: the version folder's `requirements.txt` (`<model>/<version>/requirements.txt`) when it
has one, else the model folder's (`<model>/requirements.txt`, shared by every version). Only models whose
backend runs in instance processes (GIL-bound code: Python models) use it; their processes are started with the
environment's interpreter and see its packages first.

How an environment is made, and why:

* `venv` without pip (50 ms), then the server's own pip installs into it with `pip --python <env python>`. A
  venv with its own pip costs five seconds more to create, for nothing the server's pip cannot do.
* The environment's site-packages holds `zzz_inferd_server.pth`, which adds the server's site-packages after
  the environment's own (the name sorts last, so packages' own `.pth` files come first). pip therefore sees what
  the server has: a requirement the server already satisfies is not installed again, and one the environment
  pins at another version is installed into the environment only; pip never uninstalls anything of the server's,
  which lies outside the environment. inferd, numpy and the rest of the server stay importable.
* Instance processes are spawned by multiprocessing, which gives the child its parent's `sys.path`; the child
  then puts the environment's site-packages in front of it (`enter_environment`), so the model's own
  requirements win over the server's copies. Modules that inferd itself imported in the child before that
  (numpy, protobuf, inferd) are the server's: a requirement cannot replace them, and the log warns when an
  environment installs one of them.
* Cached by a hash of the file's bytes, the Python version and the server's interpreter, under the cache folder
  (`--model-env-dir`, else `$INFERD_CACHE_DIR/envs`, else `~/.cache/inferd/envs`): built once, reused across
  restarts and by every model with identical requirements. A build holds an exclusive `flock` on
  `<key>.lock` (so concurrent builds, in one server or several, build it once) and writes `inferd-env.json`
  last: a folder without it is a build that did not finish, and is removed and built again.
* Progress goes to the server log (start, each pip line, the time taken). A failed install raises
  `EnvironmentBuildError` with pip's last meaningful lines: the manager makes only that model UNAVAILABLE.

Relative paths inside requirements.txt (`./wheels/x.whl`, `-r base.txt`, `--find-links wheels`) are resolved
from the folder that holds it. Old environments are never deleted by the server: remove the cache folder's
entries to reclaim space.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib
import importlib.util
import json
import logging
import os
import shutil
import site
import subprocess
import sys
import time
import venv
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ENV_DIR_VARIABLE", "REQUIREMENTS", "EnvironmentBuildError", "EnvironmentCache", "PythonEnvironment",
           "default_env_dir", "enter_environment", "find_requirements", "shadowed_modules"]

log = logging.getLogger("inferd.instances.environments")

REQUIREMENTS = "requirements.txt"
ENV_DIR_VARIABLE = "INFERD_CACHE_DIR"  # environments go to $INFERD_CACHE_DIR/envs
_FORMAT = "inferd-env-1"  # part of every key: a change in how environments are laid out builds new ones
_MARKER = "inferd-env.json"  # written last: its presence means the environment is complete
_SERVER_PTH = "zzz_inferd_server.pth"
_ERROR_LINES = 8


class EnvironmentBuildError(Exception):
    """A model's environment could not be built; the message carries pip's own words."""


@dataclass(frozen=True, slots=True)
class PythonEnvironment:
    """A built environment: its folder, its interpreter and its own site-packages folders."""

    key: str
    path: Path
    python: Path
    site_dirs: tuple[str, ...]


def default_env_dir() -> Path:
    """$INFERD_CACHE_DIR/envs, else $XDG_CACHE_HOME/inferd/envs, else ~/.cache/inferd/envs."""
    root = os.environ.get(ENV_DIR_VARIABLE)
    if root:
        return Path(root).expanduser() / "envs"
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "inferd" / "envs"


def find_requirements(version_dir: Path) -> Path | None:
    """The requirements file for a model version: its own folder's, else the model folder's, else None."""
    for folder in (version_dir, version_dir.parent):
        candidate = folder / REQUIREMENTS
        if candidate.is_file():
            return candidate
    return None


def enter_environment(site_dirs: Sequence[str]) -> None:
    """In an instance process: put the environment's site-packages (and what its .pth files add) first on sys.path.

    multiprocessing gave this process the server's sys.path; `site.addsitedir` appends the environment's folders
    (processing their .pth files), which then move in front of everything the server had.
    """
    if not site_dirs:
        return
    before = list(sys.path)
    for folder in site_dirs:
        site.addsitedir(folder)
    seen = set(before)
    added: list[str] = []
    for entry in sys.path:
        if entry not in seen:
            seen.add(entry)
            added.append(entry)
    sys.path[:] = [*added, *before]
    importlib.invalidate_caches()


def _server_site_dirs() -> list[str]:
    """Where the server's own packages are: its site-packages (and the user site, when it is used)."""
    dirs = list(site.getsitepackages())
    if site.ENABLE_USER_SITE:
        user = site.getusersitepackages()
        if os.path.isdir(user):
            dirs.append(user)
    return [d for d in dict.fromkeys(dirs) if os.path.isdir(d)]


def environment_key(requirements: bytes) -> str:
    """What identifies an environment: the requirements' bytes, this Python, this server's interpreter and packages."""
    digest = hashlib.sha256()
    for part in (_FORMAT, sys.implementation.name, sys.version, sys.platform, sys.executable,
                 *_server_site_dirs()):
        digest.update(part.encode() + b"\0")
    digest.update(requirements)
    return digest.hexdigest()


def _pip_error(lines: Sequence[str]) -> str:
    """pip's last meaningful lines: from its first "ERROR:" line on, else the last few lines."""
    meaningful = [line.strip() for line in lines if line.strip() and not line.startswith("[notice]")]
    starts = [i for i, line in enumerate(meaningful) if line.startswith("ERROR:")]
    picked = meaningful[starts[0]:] if starts else meaningful
    return "; ".join(picked[-_ERROR_LINES:]) or "pip gave no output"


@contextlib.contextmanager
def _locked(lock_path: Path, label: str) -> Iterator[None]:
    """An exclusive flock on `lock_path`: other threads and processes building the same environment wait here."""
    with open(lock_path, "a+b") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("%s: waiting for another build of the same environment", label)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class EnvironmentCache:
    """Builds and reuses per-model environments under one cache folder (see the module docstring)."""

    def __init__(self, root: str | Path | None = None) -> None:
        self._root = Path(root).expanduser() if root is not None else None

    @property
    def root(self) -> Path:
        """The cache folder (resolved when first needed, so the environment variable may be set late)."""
        return self._root if self._root is not None else default_env_dir()

    def ensure(self, requirements: Path, model: str = "") -> PythonEnvironment:
        """The environment for this requirements file: reused when built before, else built now."""
        requirements = requirements.absolute()  # pip runs in the file's folder
        label = f"model '{model}'" if model else str(requirements)
        try:
            content = requirements.read_bytes()
        except OSError as exc:
            raise EnvironmentBuildError(f"cannot read {requirements}: {exc.strerror or exc}") from None
        key = environment_key(content)
        root = self.root
        path = root / key[:32]
        try:
            root.mkdir(parents=True, exist_ok=True)
            with _locked(root / f"{key[:32]}.lock", label):
                environment = _read_marker(path, key)
                if environment is not None:
                    log.info("%s: using the Python environment %s (built before from identical requirements)",
                             label, path)
                else:
                    environment = self._build(requirements, key, path, label)
        except OSError as exc:
            raise EnvironmentBuildError(f"cannot build the Python environment for {requirements} in {path}: "
                                        f"{exc.strerror or exc}") from None
        shadowed = shadowed_modules(environment)
        if shadowed:
            log.warning("%s: the environment installs %s, but instance processes keep the server's copy (inferd "
                        "imports it before the model)", label, ", ".join(shadowed))
        return environment

    def _build(self, requirements: Path, key: str, path: Path, label: str) -> PythonEnvironment:
        started = time.perf_counter()
        if path.exists():
            log.warning("%s: removing the unfinished Python environment %s", label, path)
            shutil.rmtree(path)
        log.info("%s: building a Python environment from %s in %s", label, requirements, path)
        try:
            environment = _create(path, key, label, requirements)
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)  # never leave a half-built environment behind
            raise
        log.info("%s: Python environment %s ready in %.1f s", label, path, time.perf_counter() - started)
        return environment


def shadowed_modules(environment: PythonEnvironment) -> list[str]:
    """Top-level modules of the environment that the server has already imported (numpy, protobuf...).

    The instance process imports inferd (and so these) before it enters the environment: for them the
    environment's copy is never used. The server's own imports stand in for the child's, a close superset.
    """
    loaded = {name.partition(".")[0] for name in list(sys.modules)}
    found: set[str] = set()
    for folder in environment.site_dirs:
        with contextlib.suppress(OSError):
            for entry in Path(folder).iterdir():
                if entry.name.endswith((".dist-info", ".egg-info", ".pth")) or entry.name.startswith(("_", ".")):
                    continue
                name = entry.name.partition(".")[0] if entry.is_file() else entry.name
                if entry.is_dir() or entry.suffix in (".py", ".so", ".pyd"):
                    found.add(name)
    return sorted(found & loaded)


def _env_python(path: Path) -> Path:
    return path / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _read_marker(path: Path, key: str) -> PythonEnvironment | None:
    """The environment recorded in a finished build's marker; None when unfinished, foreign or broken."""
    try:
        record = json.loads((path / _MARKER).read_text())
    except (OSError, ValueError):
        return None
    python = _env_python(path)
    if not isinstance(record, dict) or record.get("key") != key or not python.exists():
        return None
    return PythonEnvironment(key, path, python, tuple(record.get("site_dirs", ())))


def _create(path: Path, key: str, label: str, requirements: Path) -> PythonEnvironment:
    server_pip = importlib.util.find_spec("pip") is not None
    venv.EnvBuilder(with_pip=not server_pip, symlinks=os.name != "nt").create(path)
    python = _env_python(path)
    site_dirs = _site_dirs_of(python)
    # The server's packages come after the environment's own (see the module docstring).
    lines = [f"import site; site.addsitedir({folder!r})" for folder in _server_site_dirs()]
    Path(site_dirs[0], _SERVER_PTH).write_text(
        "# Added by inferd: the server's packages, after this environment's own.\n" + "\n".join(lines) + "\n")
    pip = [sys.executable, "-m", "pip", "--python", str(python)] if server_pip else [str(python), "-m", "pip"]
    _run_pip([*pip, "install", "--disable-pip-version-check", "--no-input", "--progress-bar", "off",
              "-r", str(requirements)], requirements, label)
    record = {"key": key, "requirements": str(requirements), "python": str(python), "site_dirs": site_dirs,
              "server": sys.executable, "python_version": sys.version, "built": time.time()}
    partial = path / f"{_MARKER}.partial"
    partial.write_text(json.dumps(record, indent=2))
    os.replace(partial, path / _MARKER)  # the last step: from here on the environment counts as built
    return PythonEnvironment(key, path, python, tuple(site_dirs))


def _site_dirs_of(python: Path) -> list[str]:
    """The environment's own site-packages folders, as its interpreter names them (asked before the server's .pth
    is written, and with -I: no PYTHON* variables, no user site; `site` must run, it is what enters the venv)."""
    probe = "import json, sysconfig; print(json.dumps([sysconfig.get_path('purelib'), sysconfig.get_path('platlib')]))"
    result = subprocess.run([str(python), "-I", "-c", probe], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise EnvironmentBuildError(f"the new environment's interpreter {python} does not run: "
                                    f"{result.stderr.strip()[-500:]}")
    dirs = [str(d) for d in dict.fromkeys(json.loads(result.stdout))]
    outside = [d for d in dirs if not Path(d).is_relative_to(python.parent.parent)]
    if outside:
        raise EnvironmentBuildError(f"the new environment's interpreter {python} names site-packages outside it: "
                                    f"{', '.join(outside)}")
    for folder in dirs:
        Path(folder).mkdir(parents=True, exist_ok=True)
    return dirs


def _run_pip(command: list[str], requirements: Path, label: str) -> None:
    """Run pip, logging each line it prints; raise with its last meaningful lines when it fails."""
    log.debug("%s: %s", label, " ".join(command))
    tail: deque[str] = deque(maxlen=200)
    process = subprocess.Popen(command, cwd=requirements.parent, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, text=True, errors="replace",
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert process.stdout is not None
    with process.stdout:
        for line in process.stdout:
            line = line.rstrip()
            if line:
                tail.append(line)
                log.info("%s: pip: %s", label, line)
    code = process.wait()
    if code != 0:
        raise EnvironmentBuildError(f"pip could not install {requirements} (exit code {code}): {_pip_error(tail)}")
