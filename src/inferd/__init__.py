"""inferd: a Triton-compatible model inference server in one pip install."""

from ._version import __version__
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
