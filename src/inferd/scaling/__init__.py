"""Elastic serving on one machine: scale to zero with held requests, the instance autoscaler, memory-aware
eviction. One `Scaler` per server watches the models; the `wake` stage holds a request for a model scaled to zero
until it is loaded again."""

from .memory import parse_memory_limit
from .scaler import Scaler
from .wake import WakeStage

__all__ = ["Scaler", "WakeStage", "parse_memory_limit"]
