"""What a model scaled to zero keeps in place of its scheduler: no instances, and a clear refusal for a request
that reaches it without passing the `wake` stage (the stage holds requests until the model is loaded again)."""

from __future__ import annotations

from collections.abc import Sequence

from ..backends import Backend
from ..scheduling import Job, Tensors
from ..types import InferError


class _NoInstances:
    instances: Sequence[Backend] = ()


class ColdScheduler:
    def __init__(self, name: str, label: str) -> None:
        self.name = name  # the scheduler's name ("model-version"), kept for the one that wakes
        self._label = label
        self.pool = _NoInstances()

    def _refuse(self) -> InferError:
        error = InferError.unavailable(f"{self._label} is scaled to zero and is being loaded again; retry")
        error.retry_after = 1
        return error

    def make_job(self, feeds: Tensors, rows: int, priority: int, timeout_us: int) -> Job:
        return Job(feeds, rows)

    def run_now(self, job: Job) -> Tensors | None:
        return None

    async def run(self, job: Job) -> Tensors:
        raise self._refuse()

    def run_sync(self, job: Job) -> Tensors:
        raise self._refuse()

    def close(self) -> None:
        pass


def is_cold(scheduler: object) -> bool:
    return isinstance(scheduler, ColdScheduler)
