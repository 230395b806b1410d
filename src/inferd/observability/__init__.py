"""What the server reports about itself: statistics (Triton's statistics extension), Prometheus metrics,
request traces (Triton's trace extension) and the log settings (Triton's logging extension)."""

from .logs import LOG_CONTROL, LogControl
from .statistics import FailureReason, ModelStatistics
from .tracing import Trace, TraceExporter, Tracer, TraceSettings

__all__ = ["LOG_CONTROL", "FailureReason", "LogControl", "ModelStatistics", "Trace", "TraceExporter",
           "TraceSettings", "Tracer"]
