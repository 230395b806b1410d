"""The one error type of the tools: a message for the user and the exit status the command returns."""

from __future__ import annotations

import importlib
from types import ModuleType

USAGE = 2  # a wrong command line, a missing package or an unusable file
FAILED = 1  # the tool ran and the result is not good enough (a difference over the tolerance)


class ToolError(Exception):
    """What went wrong, in one line; `status` is the exit status of the command."""

    def __init__(self, message: str, status: int = USAGE) -> None:
        super().__init__(message)
        self.status = status


def need(module: str, package: str, extra: str = "convert") -> ModuleType:
    """Import an optional dependency, or a ToolError naming the package and the extra that brings it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ToolError(f"needs the package {package} ({exc}): pip install 'inferd[{extra}]'") from None
    except Exception as exc:  # installed, but it does not import with the versions beside it
        raise ToolError(f"the package {package} is installed but does not import ({type(exc).__name__}: "
                        f"{' '.join(str(exc).split())[:200]}); check its version against its framework's") from None
