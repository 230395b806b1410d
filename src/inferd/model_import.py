"""A model's own Python file, imported in the process that runs it.

Used where model code runs: a Python model's instance process (`backends/python.py`) and the short-lived process
that calls a Triton model's `auto_complete_config` (`compat/triton_autocomplete.py`); never in the server process.
The file is imported as a module named after it, with its version folder and model folder first on `sys.path` so
that it can import the modules that lie beside it. A syntax error, or whatever the module raises at import, becomes
a one-line `ConfigError`: the reason the model is UNAVAILABLE.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
import traceback
from pathlib import Path
from types import ModuleType

from .config import ConfigError

__all__ = ["import_model", "syntax_error_reason"]

log = logging.getLogger("inferd.python")


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def syntax_error_reason(path: Path, exc: SyntaxError) -> str:
    where = f"line {exc.lineno}" if exc.lineno else "?"
    return f"{path.name} {where}: SyntaxError: {_one_line(exc.msg)}"


def import_model(path: Path) -> ModuleType:
    """Import the model file as a module named after it, its folders first on the import path."""
    for folder in (path.parent.parent, path.parent):  # so the version folder ends up first
        entry = str(folder.resolve())
        if entry in sys.path:
            sys.path.remove(entry)
        sys.path.insert(0, entry)
    name = path.stem
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"{path} cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        sys.modules.pop(name, None)
        raise ConfigError(syntax_error_reason(path, exc)) from None
    except Exception as exc:  # whatever the module raises at import is why the model cannot load
        sys.modules.pop(name, None)
        log.error("importing %s failed:\n%s", path, "".join(traceback.format_exception(exc)).rstrip())
        raise ConfigError(f"importing {path.name} raised {type(exc).__name__}: {_one_line(exc)}") from None
    return module
