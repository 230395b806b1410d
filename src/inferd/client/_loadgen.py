"""The load loops of `inferd bench`: closed loop (fixed concurrency) and open loop (fixed request rate).

One `LoadClient` per process wraps tritonclient's asyncio client for the protocol, with every `InferInput` built
before the clock starts. A step records each request's latency with `perf_counter_ns` and counts failures by
message; it also measures the CPU time its own process spent, so a report can say when the client, not the server,
was the limit. The same code runs in the benchmark process and in `--processes` workers.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from ._inputs import TensorData

__all__ = ["BenchError", "LoadClient", "StepPlan", "StepSample", "Target", "new_event_loop", "run_step"]

Mode = Literal["concurrency", "rate"]
_PROGRESS_INTERVAL_S = 0.1
_MESSAGE_LIMIT = 300


class BenchError(Exception):
    """The benchmark cannot run (server unreachable, model unknown, inputs impossible); the message says why."""


@dataclass(frozen=True)
class Target:
    """Where and what to send: everything a worker process needs to build its own client."""

    protocol: Literal["http", "grpc"]
    url: str  # host:port, no scheme (tritonclient's form)
    model: str
    version: str = ""
    ssl: bool = False
    binary: bool = True  # HTTP tensor encoding: binary extension, or JSON lists
    outputs: tuple[str, ...] = ()  # the model's outputs, asked for as JSON when not binary
    request_timeout_s: float = 60.0


@dataclass(frozen=True)
class StepPlan:
    """One measurement step for one process."""

    mode: Mode
    concurrency: int = 1  # closed loop: requests kept in flight
    rate: float = 0.0  # open loop: requests per second this process sends
    distribution: Literal["constant", "poisson"] = "constant"
    duration_s: float = 10.0
    max_requests: int | None = None  # stop early after this many requests
    seed: int = 0


@dataclass
class StepSample:
    """What one process measured in one step; samples of several processes merge into one report row."""

    latencies_ns: np.ndarray  # one per successful request
    errors: Counter[str]
    elapsed_ns: int  # first send to last completion
    cpu_s: float  # this process's CPU time (every thread) over the step
    send_lag_ns: int = 0  # open loop: total time sends ran behind their schedule
    send_lag_max_ns: int = 0
    sends: int = 0
    failure: str | None = None  # a worker that could not run at all says why here

    @property
    def requests(self) -> int:
        return int(self.latencies_ns.size) + sum(self.errors.values())


@dataclass
class _StepState:
    latencies: list[int] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    issued: int = 0
    lag_ns: int = 0
    lag_max_ns: int = 0

    @property
    def completed(self) -> int:
        return len(self.latencies) + sum(self.errors.values())


def new_event_loop(protocol: str) -> asyncio.AbstractEventLoop:
    """uvloop for HTTP (aiohttp's recommended loop); asyncio's own loop for gRPC, the one grpc.aio is built on.

    Measured on a loaded 2-core box, neither choice moved the client's CPU per request beyond the noise (about
    450-500 µs for `simple`, most of it in the loopback socket write), so this is about support, not speed.
    """
    if protocol == "http":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def _error_message(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if not text.startswith(type(exc).__name__) and not hasattr(exc, "message"):
        text = f"{type(exc).__name__}: {text}"
    text = " ".join(text.split())
    return text if len(text) <= _MESSAGE_LIMIT else text[: _MESSAGE_LIMIT - 1] + "…"


class LoadClient:
    """tritonclient's asyncio client for one protocol, with every request's inputs built once."""

    def __init__(self, target: Target) -> None:
        """Create inside a running event loop (aiohttp binds its session to it); `prepare` before `infer`."""
        self.target = target
        self._module: Any = _client_module(target.protocol)
        if target.protocol == "http":
            self._client = self._module.InferenceServerClient(
                target.url, conn_limit=0, conn_timeout=target.request_timeout_s, ssl=target.ssl)
        else:
            self._client = self._module.InferenceServerClient(target.url, ssl=target.ssl)
        self._outputs: list[Any] | None = None
        self._inputs: list[list[Any]] = []

    def prepare(self, input_sets: Sequence[Sequence[TensorData]], outputs: Sequence[str] = ()) -> None:
        """Build every request's `InferInput`s now (binary data serialized once), not per request.

        `outputs` are the model's output names, asked for explicitly as JSON when HTTP tensors are not binary
        (otherwise the server sends every output in binary).
        """
        if not input_sets:
            raise ValueError("no input data")
        if self.target.protocol == "http" and not self.target.binary:
            self._outputs = [self._module.InferRequestedOutput(n, binary_data=False) for n in outputs]
        self._inputs = [[self._infer_input(t) for t in tensors] for tensors in input_sets]

    def _infer_input(self, tensor: TensorData) -> Any:
        infer_input = self._module.InferInput(tensor.name, list(tensor.array.shape), tensor.datatype)
        if tensor.shm_region is not None:
            infer_input.set_shared_memory(tensor.shm_region, tensor.shm_byte_size, tensor.shm_offset)
        elif self.target.protocol == "http":
            infer_input.set_data_from_numpy(tensor.array, binary_data=self.target.binary)
        else:
            infer_input.set_data_from_numpy(tensor.array)
        return infer_input

    @property
    def client(self) -> Any:
        """The tritonclient asyncio client itself, for metadata, statistics and shared-memory calls."""
        return self._client

    async def infer(self, index: int) -> None:
        """One inference with input set `index` (modulo the number of sets); raises on failure."""
        target = self.target
        inputs = self._inputs[index % len(self._inputs)]
        if target.protocol == "http":
            await self._client.infer(target.model, inputs, model_version=target.version, outputs=self._outputs)
        else:
            await self._client.infer(target.model, inputs, model_version=target.version,
                                     client_timeout=target.request_timeout_s)

    async def warm(self, connections: int) -> None:
        """Open the connections a step will use before its clock starts (health calls: no inference counted).

        A failure here is left to the step, which counts each failed request by its message.
        """
        count = connections if self.target.protocol == "http" else min(connections, 1)
        await asyncio.gather(*(self._client.is_server_live() for _ in range(count)), return_exceptions=True)

    async def close(self) -> None:
        await self._client.close()


def _client_module(protocol: str) -> Any:
    """The tritonclient asyncio module; HTTP needs aiohttp and geventhttpclient, which inferd's `bench` extra
    brings (with the tritonclient version the server is tested with)."""
    try:
        if protocol == "http":
            import tritonclient.http.aio as module
        else:
            import tritonclient.grpc.aio as module
    except (ImportError, RuntimeError) as exc:  # tritonclient.http raises RuntimeError for a missing dependency
        raise ImportError(f"-i {protocol} needs inferd's bench extra: pip install 'inferd[bench]' "
                          f"(from a clone: pip install -e '.[bench]') ({exc})") from None
    return module


async def run_step(client: LoadClient, plan: StepPlan, *, ready: Callable[[], None] | None = None,
                   progress: Callable[[int], None] | None = None) -> StepSample:
    """Warm up, call `ready` (a barrier across processes), then run one step and return what it measured.

    Every request the step sends is awaited before it returns, so `StepSample.requests` is exactly the number of
    requests the server saw from this process.
    """
    connections = plan.concurrency if plan.mode == "concurrency" else 1
    await client.warm(connections)
    if ready is not None:
        ready()
    state = _StepState()
    reporter = asyncio.create_task(_report(state, progress)) if progress is not None else None
    cpu_start = time.process_time()
    start = time.perf_counter_ns()
    try:
        if plan.mode == "concurrency":
            await _closed_loop(client, plan, state, start)
        else:
            await _open_loop(client, plan, state, start)
    finally:
        elapsed = time.perf_counter_ns() - start
        cpu = time.process_time() - cpu_start
        if reporter is not None:
            reporter.cancel()
    if progress is not None:
        progress(state.completed)
    return StepSample(np.asarray(state.latencies, dtype=np.int64), state.errors, elapsed, cpu,
                      state.lag_ns, state.lag_max_ns, state.issued if plan.mode == "rate" else 0)


async def _report(state: _StepState, progress: Callable[[int], None]) -> None:
    while True:
        progress(state.completed)
        await asyncio.sleep(_PROGRESS_INTERVAL_S)


async def _one(client: LoadClient, index: int, state: _StepState) -> None:
    sent = time.perf_counter_ns()
    try:
        await client.infer(index)
    except Exception as exc:  # every failure counts, whatever raised it
        state.errors[_error_message(exc)] += 1
    else:
        state.latencies.append(time.perf_counter_ns() - sent)


async def _closed_loop(client: LoadClient, plan: StepPlan, state: _StepState, start: int) -> None:
    """`concurrency` workers, each sending its next request when the previous one completes."""
    deadline = start + int(plan.duration_s * 1e9)
    limit = plan.max_requests if plan.max_requests is not None else float("inf")
    clock = time.perf_counter_ns

    async def worker(first: int) -> None:
        index = first
        while state.issued < limit and clock() < deadline:
            state.issued += 1
            await _one(client, index, state)
            index += plan.concurrency

    await asyncio.gather(*(worker(i) for i in range(plan.concurrency)))


async def _open_loop(client: LoadClient, plan: StepPlan, state: _StepState, start: int) -> None:
    """Requests sent on a schedule (constant gaps or Poisson arrivals), whether or not earlier ones completed.

    When the loop falls behind its schedule it sends the late requests at once rather than skipping them, and
    records by how much it was late: a large send lag means the client could not keep the rate.
    """
    if plan.rate <= 0:
        return
    deadline = start + int(plan.duration_s * 1e9)
    limit = plan.max_requests if plan.max_requests is not None else float("inf")
    rng = random.Random(plan.seed)
    gap_ns = 1e9 / plan.rate
    scheduled = float(start)
    pending: set[asyncio.Task[None]] = set()
    clock = time.perf_counter_ns
    while state.issued < limit and scheduled < deadline:
        now = clock()
        if scheduled > now:
            await asyncio.sleep((scheduled - now) / 1e9)
            now = clock()
        lag = max(0, now - int(scheduled))
        state.lag_ns += lag
        state.lag_max_ns = max(state.lag_max_ns, lag)
        task = asyncio.create_task(_one(client, state.issued, state))
        state.issued += 1
        pending.add(task)
        task.add_done_callback(pending.discard)
        scheduled += rng.expovariate(1.0) * gap_ns if plan.distribution == "poisson" else gap_ns
    if pending:
        await asyncio.gather(*pending)
