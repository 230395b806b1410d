"""How requests reach model instances: direct execution now, dynamic batching later, behind one interface."""

from .direct import DirectScheduler, Scheduler

__all__ = ["DirectScheduler", "Scheduler"]
