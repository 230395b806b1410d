"""Direct scheduling: each request runs by itself on an idle instance of its model.

Where it runs matters more than anything else for small models: handing a 7 µs model to a worker thread costs
more than the model. So a model whose measured execution time is below `INLINE_BUDGET_NS` runs inline on the
caller's thread (the event loop, for the network frontends), as long as an instance is idle; slower models, and
requests that find every instance busy, go to the model's own instance threads.
"""

from __future__ import annotations

import asyncio
import queue
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import numpy as np

from ..backends import Backend

Tensors = dict[str, np.ndarray]

# Executions measured below this run inline; above it they would stall other requests on the event loop.
INLINE_BUDGET_NS = 300_000
_EWMA_WEIGHT = 0.1


class Scheduler(Protocol):
    def run_sync(self, inputs: Tensors) -> Tensors: ...

    async def run(self, inputs: Tensors) -> Tensors: ...

    def close(self) -> None: ...


class DirectScheduler:
    def __init__(self, instances: list[Backend], name: str) -> None:
        if not instances:
            raise ValueError("a scheduler needs at least one instance")
        self._idle: queue.SimpleQueue[Backend] = queue.SimpleQueue()
        for instance in instances:
            self._idle.put(instance)
        self._inline_ok = all(i.releases_gil for i in instances)
        self._executor = ThreadPoolExecutor(max_workers=len(instances), thread_name_prefix=f"inferd-{name}")
        # Unknown cost: start by offloading; the first measurements decide.
        self._exec_ns = float(INLINE_BUDGET_NS * 10)

    def _execute(self, instance: Backend, inputs: Tensors) -> Tensors:
        start = time.perf_counter_ns()
        try:
            return instance.execute(inputs)
        finally:
            elapsed = time.perf_counter_ns() - start
            self._exec_ns += (elapsed - self._exec_ns) * _EWMA_WEIGHT
            self._idle.put(instance)

    def _run_blocking(self, inputs: Tensors) -> Tensors:
        return self._execute(self._idle.get(), inputs)

    def run_sync(self, inputs: Tensors) -> Tensors:
        return self._run_blocking(inputs)

    async def run(self, inputs: Tensors) -> Tensors:
        if self._inline_ok and self._exec_ns < INLINE_BUDGET_NS:
            try:
                instance = self._idle.get_nowait()
            except queue.Empty:
                pass
            else:
                return self._execute(instance, inputs)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._run_blocking, inputs)

    def close(self) -> None:
        self._executor.shutdown(wait=True)
