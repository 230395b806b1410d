"""inferd: a Triton-compatible model inference server in one pip install.

The public names are loaded on first use, so that importing a small module of the package (`inferd.types` in an
instance process, say) does not import the whole server.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._version import __version__

if TYPE_CHECKING:
    from .server import Server
    from .types import ErrorKind, InferenceRequest, InferenceResponse, InferError, RequestedOutput

__all__ = [
    "ErrorKind",
    "InferError",
    "InferenceRequest",
    "InferenceResponse",
    "RequestedOutput",
    "Server",
    "__version__",
]


def __getattr__(name: str) -> Any:
    if name == "Server":
        from .server import Server

        return Server
    if name in ("ErrorKind", "InferError", "InferenceRequest", "InferenceResponse", "RequestedOutput"):
        from . import types

        return getattr(types, name)
    raise AttributeError(f"module 'inferd' has no attribute '{name}'")
