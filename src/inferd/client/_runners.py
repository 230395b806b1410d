"""Where a step runs: in the benchmark's own event loop, or spread over `--processes` worker processes.

Workers are spawned once per run, each with its own client and event loop; every step starts in all of them
together behind a barrier, and their samples merge into one report row.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import signal
from collections import Counter
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Barrier
from typing import Any

import numpy as np

from ..types import describe_error
from ._inputs import TensorData
from ._loadgen import BenchError, LoadClient, StepPlan, StepSample, Target, new_event_loop, run_step
from ._report import ProgressBar

__all__ = ["LocalRunner", "ProcessRunner", "StepRunner", "worker_main"]

_BARRIER_TIMEOUT_S = 120.0


class StepRunner:
    """Runs one step's plans (one per process) and returns their samples."""

    async def run(self, plans: list[StepPlan], progress: ProgressBar | None) -> list[StepSample]:
        raise NotImplementedError

    async def close(self, now: bool = False) -> None:
        """Release what the runner holds; `now` (after Ctrl-C) without waiting for a step to finish."""


class LocalRunner(StepRunner):
    """Steps in the benchmark's own event loop (the default: one process is enough up to thousands of req/s)."""

    def __init__(self, client: LoadClient) -> None:
        self._client = client

    async def run(self, plans: list[StepPlan], progress: ProgressBar | None) -> list[StepSample]:
        return [await run_step(self._client, plans[0], progress=progress.update if progress else None)]


class ProcessRunner(StepRunner):
    """`--processes N`: N spawned workers, each with its own client and event loop, started together per step."""

    def __init__(self, target: Target, input_sets: list[list[TensorData]], count: int) -> None:
        context = mp.get_context("spawn")  # fork would copy gRPC's threads and the parent's loop
        self._barrier = context.Barrier(count)
        self._counts = context.RawArray("q", count)
        self._pipes: list[Connection] = []
        self._processes = []
        for index in range(count):
            parent, child = context.Pipe()
            process = context.Process(target=worker_main, name=f"inferd-bench-{index}", daemon=True,
                                      args=(child, index, target, input_sets, self._barrier, self._counts))
            process.start()
            child.close()
            self._pipes.append(parent)
            self._processes.append(process)

    async def run(self, plans: list[StepPlan], progress: ProgressBar | None) -> list[StepSample]:
        for index, (pipe, plan) in enumerate(zip(self._pipes, plans, strict=True)):
            self._counts[index] = 0
            pipe.send(plan)
        receiving = [asyncio.create_task(asyncio.to_thread(pipe.recv)) for pipe in self._pipes]
        while progress is not None and not all(task.done() for task in receiving):
            counts = list(self._counts)
            if any(counts):  # a worker writes completed + 1 once its step has started
                progress.update(sum(max(c - 1, 0) for c in counts))
            await asyncio.wait(receiving, timeout=0.1)
        try:
            samples: list[StepSample] = await asyncio.gather(*receiving)
        except EOFError:
            raise BenchError("a --processes worker exited unexpectedly") from None
        failures = [s.failure for s in samples if s.failure]
        if failures:
            raise BenchError(f"a --processes worker failed: {failures[0]}")
        return samples

    async def close(self, now: bool = False) -> None:
        for pipe in self._pipes:
            with contextlib.suppress(OSError):
                pipe.send(None)
        for process in self._processes:
            if not now:
                await asyncio.to_thread(process.join, 10)
            if process.is_alive():
                process.terminate()
            await asyncio.to_thread(process.join, 5)
        for pipe in self._pipes:
            pipe.close()


def worker_main(pipe: Connection, index: int, target: Target, input_sets: list[list[TensorData]],
                barrier: Barrier, counts: Any) -> None:
    """A `--processes` worker: one client for the whole run, one step per plan received, None to stop.

    Steps start together behind `barrier`; `counts[index]` carries this worker's completed requests (plus one, so
    that 0 means "not started") to the parent's progress bar.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group; the parent decides
    loop = new_event_loop(target.protocol)
    asyncio.set_event_loop(loop)

    async def open_client() -> LoadClient:
        client = LoadClient(target)
        client.prepare(input_sets, target.outputs)
        return client

    def report(completed: int) -> None:
        counts[index] = completed + 1  # 0 stays "not started yet" for the parent's progress bar

    def ready() -> None:
        barrier.wait(_BARRIER_TIMEOUT_S)

    client = loop.run_until_complete(open_client())
    try:
        while (plan := pipe.recv()) is not None:
            try:
                sample = loop.run_until_complete(run_step(client, plan, ready=ready, progress=report))
            except Exception as exc:  # sent to the parent, which stops the run with this message
                barrier.abort()
                sample = StepSample(np.empty(0, np.int64), Counter(), 0, 0.0, failure=f"{describe_error(exc)}")
            pipe.send(sample)
    except (EOFError, KeyboardInterrupt):
        pass
    finally:
        loop.run_until_complete(client.close())
        loop.close()
