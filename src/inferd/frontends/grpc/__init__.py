"""Triton's V2 gRPC API (`inference.GRPCInferenceService`) and the standard gRPC health service."""

from .frontend import DEFAULT_MAX_MESSAGE_BYTES, GrpcFrontend
from .health import HealthServicer
from .servicer import InferenceServicer

__all__ = ["DEFAULT_MAX_MESSAGE_BYTES", "GrpcFrontend", "HealthServicer", "InferenceServicer"]
