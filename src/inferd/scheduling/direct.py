"""Direct scheduling (no `dynamic_batching` in the config): each request runs by itself on an idle instance.

Where it runs matters more than anything else for small models: handing a 7 µs model to a worker thread costs
more than the model. So a cheap model runs inline on the caller's thread (the event loop, for the network
frontends) when an instance is idle; slower models, and requests that find every instance busy, go to the
model's own instance threads.
"""

from __future__ import annotations

import asyncio
import queue
from concurrent.futures import ThreadPoolExecutor

from .base import InstancePool, Job, Tensors, settle_from_thread, unloading_error, unwrap


class DirectScheduler:
    def __init__(self, pool: InstancePool, name: str) -> None:
        self.pool = pool
        self.name = name
        self._executor = ThreadPoolExecutor(max_workers=len(pool.instances), thread_name_prefix=f"inferd-{name}")
        self._closed = False

    def make_job(self, feeds: Tensors, rows: int, priority: int, timeout_us: int) -> Job:
        """Without a queue, priority and queue timeouts have nothing to order or expire."""
        return Job(feeds, rows)

    def _run_blocking(self, job: Job) -> Tensors:
        return unwrap(self.pool.execute(self.pool.idle.get(), [job])[0])

    def _submit(self, job: Job) -> None:
        """With a request timeout: the job runs on an instance thread, which settles its future."""
        self._executor.submit(self._run_job, job)

    def _run_job(self, job: Job) -> None:
        if job.abandoned():
            return
        settle_from_thread([job], self.pool.execute(self.pool.idle.get(), [job]))

    def run_sync(self, job: Job) -> Tensors:
        if self._closed:
            raise unloading_error(self.name)
        if self.pool.timeout_ns:
            return self.pool.run_sync_with_deadline(job, self._submit)
        return self._run_blocking(job)

    def run_now(self, job: Job) -> Tensors | None:
        pool = self.pool
        if self._closed or not pool.cheap:  # `cheap` is never true with a request timeout
            return None
        try:
            instance = pool.idle.get_nowait()
        except queue.Empty:
            return None
        return unwrap(pool.execute(instance, [job])[0])

    async def run(self, job: Job) -> Tensors:
        if self._closed:
            raise unloading_error(self.name)
        pool = self.pool
        if pool.timeout_ns:
            return await pool.run_with_deadline(job, self._submit)
        results = self.run_now(job)
        if results is not None:
            return results
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._run_blocking, job)

    def resized(self) -> None:
        """The pool gained or lost instances (scaling/): as many instance threads as instances from now on; jobs
        the old threads hold finish there."""
        old = self._executor
        self._executor = ThreadPoolExecutor(max_workers=len(self.pool.instances),
                                            thread_name_prefix=f"inferd-{self.name}")
        old.shutdown(wait=False)

    def close(self) -> None:
        self._closed = True
        self._executor.shutdown(wait=True)
