"""How requests reach model instances: direct execution or Triton's dynamic batcher, behind one interface."""

from .base import Arrivals, BackendFailure, InstancePool, Job, Scheduler, Tensors
from .batcher import DynamicBatcher, QueuePolicy
from .direct import DirectScheduler

__all__ = ["Arrivals", "BackendFailure", "DirectScheduler", "DynamicBatcher", "InstancePool", "Job", "QueuePolicy",
           "Scheduler", "Tensors"]
