"""inferd: a Triton-compatible model inference server in one pip install."""

__version__ = "0.1.0"

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
