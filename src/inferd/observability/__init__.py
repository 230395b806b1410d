"""What the server reports about itself: statistics (Triton's statistics extension) and Prometheus metrics."""

from .statistics import FailureReason, ModelStatistics

__all__ = ["FailureReason", "ModelStatistics"]
