"""The fair-share stage: a tenant's burst waits in its own lane, other tenants' requests are admitted in turn
(weighted), cancelled waiters leak no slot, synchronous calls never wait. Real `Call`s, driven under asyncio."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from inferd.gateway.fairness import FairShareStage, default_window
from inferd.pipeline import Call, Pipeline, RequestContext
from inferd.types import InferenceRequest, InferenceResponse


@dataclass
class Tenant:
    name: str
    weight: float = 1.0


class FakePool:
    def __init__(self, instances: int) -> None:
        self.instances = [object() for _ in range(instances)]


class FakeScheduler:
    def __init__(self, instances: int) -> None:
        self.pool = FakePool(instances)


class FakeModel:
    """What the stage reads of a ServedModel."""

    def __init__(self, name: str = "m", instances: int = 1, max_batch_size: int = 0) -> None:
        self.name = name
        self.version = 1
        self.max_batch_size = max_batch_size
        self.scheduler = FakeScheduler(instances)


@dataclass
class Harness:
    """Requests sent through the stage as tasks; `admitted` in the order they got past it."""

    stage: FairShareStage
    model: Any = field(default_factory=FakeModel)
    admitted: list[Call] = field(default_factory=list)
    tasks: dict[int, asyncio.Task[None]] = field(default_factory=dict)
    done: int = 0  # admitted calls finished so far (in admission order)

    def send(self, tenant: Tenant | None = None, sync: bool = False) -> Call:
        call = Call(InferenceRequest(self.model.name, {}, {}, id=str(len(self.tasks))), RequestContext("v2-http"),
                    time.perf_counter_ns(), sync)
        call.model = self.model
        if tenant is not None:
            call.state["tenant"] = tenant
        self.tasks[id(call)] = asyncio.ensure_future(self._enter(call))
        return call

    async def _enter(self, call: Call) -> None:
        pending = self.stage(call)
        if pending is not None:
            await pending
        self.admitted.append(call)

    async def settle(self) -> None:
        for _ in range(5):
            await asyncio.sleep(0)

    async def finish_next(self) -> Call:
        """The oldest admitted request still running ends; the loop runs so a woken waiter gets past."""
        call = self.admitted[self.done]
        self.done += 1
        call.finish()
        await self.settle()
        return call

    def load(self) -> tuple[int, int]:
        return self.stage.load(self.model)


def tenant_of(call: Call) -> str:
    tenant = call.state.get("tenant")
    return "-" if tenant is None else tenant.name


async def test_a_burst_does_not_delay_another_tenant() -> None:
    h = Harness(FairShareStage(window=lambda model: 2))
    acme, beta = Tenant("acme"), Tenant("beta")
    for _ in range(100):
        h.send(acme)
    await h.settle()
    assert h.load() == (2, 98)
    for _ in range(5):
        h.send(beta)
    await h.settle()
    assert h.load() == (2, 103)
    for _ in range(10):
        await h.finish_next()
    following = [tenant_of(c) for c in h.admitted[2:12]]
    assert following.count("beta") == 5, following
    assert following == ["acme", "beta"] * 5  # round robin while both wait
    while h.done < len(h.admitted):
        await h.finish_next()
    assert len(h.admitted) == 105
    assert h.load() == (0, 0)


async def test_weights_share_the_slots_in_proportion() -> None:
    h = Harness(FairShareStage(window=lambda model: 2))
    heavy, light = Tenant("heavy", weight=3.0), Tenant("light", weight=1.0)
    for _ in range(60):
        h.send(heavy)
        h.send(light)
    await h.settle()
    for _ in range(40):
        await h.finish_next()
    contended = [tenant_of(c) for c in h.admitted[2:42]]
    assert contended.count("heavy") == 30, contended
    assert contended.count("light") == 10, contended


async def test_a_tenant_that_was_idle_saves_no_credit() -> None:
    """A lane that starts waiting starts at the current virtual time: served in turn from now on, not given the
    turns it did not use while it was idle."""
    h = Harness(FairShareStage(window=lambda model: 1))
    acme, beta = Tenant("acme"), Tenant("beta")
    for _ in range(20):
        h.send(acme)
    h.send(beta)
    await h.settle()
    for _ in range(12):
        await h.finish_next()
    assert [tenant_of(c) for c in h.admitted[:4]] == ["acme", "acme", "beta", "acme"]
    for _ in range(3):
        h.send(beta)
    await h.settle()
    for _ in range(6):
        await h.finish_next()
    assert [tenant_of(c) for c in h.admitted[13:19]] == ["beta", "acme"] * 3


async def test_a_cancelled_waiter_leaks_no_slot() -> None:
    h = Harness(FairShareStage(window=lambda model: 2))
    acme, beta = Tenant("acme"), Tenant("beta")
    h.send(acme)
    h.send(acme)
    gone = h.send(acme)
    stays = h.send(beta)
    await h.settle()
    assert h.load() == (2, 2)
    h.tasks[id(gone)].cancel()
    await h.settle()
    gone.finish()  # what the pipeline does for a cancelled request: it never held a slot, so none is given back
    assert h.load() == (2, 1)
    await h.finish_next()
    assert h.admitted[-1] is stays
    assert h.load() == (2, 0)
    await h.finish_next()
    await h.finish_next()
    assert h.load() == (0, 0)
    assert gone not in h.admitted
    # The window is still right: two pass, the third waits.
    for _ in range(3):
        h.send(acme)
    await h.settle()
    assert h.load() == (2, 1)


async def test_a_waiter_cancelled_after_its_slot_was_handed_over_passes_it_on() -> None:
    h = Harness(FairShareStage(window=lambda model: 1))
    acme = Tenant("acme")
    holder = h.send(acme)
    granted = h.send(acme)
    nxt = h.send(acme)
    await h.settle()
    assert h.load() == (1, 2)
    holder.finish()  # the slot goes to `granted` at once ...
    h.tasks[id(granted)].cancel()  # ... whose client goes away before its task runs again
    await h.settle()
    granted.finish()
    assert granted not in h.admitted
    assert h.admitted[-1] is nxt
    assert h.load() == (1, 0)
    nxt.finish()
    assert h.load() == (0, 0)


async def test_requests_without_a_tenant_share_the_anonymous_lane() -> None:
    h = Harness(FairShareStage(window=lambda model: 1))
    h.send(Tenant("acme"))
    first, second = h.send(), h.send()  # two lanes of their own would both go before beta
    h.send(Tenant("beta"))
    await h.settle()
    for _ in range(3):
        await h.finish_next()
    assert [tenant_of(c) for c in h.admitted] == ["acme", "-", "beta", "-"]
    assert h.admitted[1] is first and h.admitted[3] is second


async def test_synchronous_calls_never_wait_and_are_not_counted() -> None:
    h = Harness(FairShareStage(window=lambda model: 1))
    acme = Tenant("acme")
    h.send(acme)
    h.send(acme)
    await h.settle()
    assert h.load() == (1, 1)
    sync_calls = []
    for _ in range(5):
        call = Call(InferenceRequest("m", {}, {}), RequestContext("bls"), time.perf_counter_ns(), True)
        call.model = h.model
        call.state["tenant"] = acme
        assert h.stage(call) is None
        sync_calls.append(call)
    assert h.load() == (1, 1)
    for call in sync_calls:
        call.finish()
    assert h.load() == (1, 1)


async def test_a_slot_freed_on_another_thread_wakes_the_waiter_on_its_loop() -> None:
    """The HTTP and gRPC front doors run separate event loops: a request ending on one wakes a waiter on the
    other through its loop."""
    h = Harness(FairShareStage(window=lambda model: 1))
    holder = h.send(Tenant("acme"))
    waiter = h.send(Tenant("beta"))
    await h.settle()
    assert h.load() == (1, 1)
    thread = threading.Thread(target=holder.finish)
    thread.start()
    thread.join()
    await asyncio.wait_for(h.tasks[id(waiter)], 5)
    assert h.admitted[-1] is waiter
    assert h.load() == (1, 0)


def test_the_default_window_fits_full_batches() -> None:
    assert default_window(FakeModel(instances=1, max_batch_size=0)) == 2  # type: ignore[arg-type]
    assert default_window(FakeModel(instances=2, max_batch_size=8)) == 32  # type: ignore[arg-type]
    assert default_window(FakeModel(instances=3, max_batch_size=1)) == 6  # type: ignore[arg-type]


async def test_an_unloaded_versions_window_goes_with_it() -> None:
    stage = FairShareStage()
    h = Harness(stage)
    call = h.send(Tenant("acme"))
    await h.settle()
    assert stage.load(h.model) == (1, 0)
    call.finish()
    del h, call
    gc.collect()
    assert len(stage._windows) == 0


class Gate:
    """Stages around `fair-share` in a real pipeline: `resolve` sets the model, `work` waits for its event."""

    def __init__(self, name: str, model: Any = None, fail: bool = False) -> None:
        self.name = name
        self.model = model
        self.fail = fail
        self.open = asyncio.Event()

    def __call__(self, call: Call) -> Any:
        if self.model is not None:
            call.model = self.model
            return None
        if self.name == "respond":
            call.response = InferenceResponse("m", "1", {}, call.request.id)
            return None
        return self._work(call)

    async def _work(self, call: Call) -> None:
        await self.open.wait()
        if call.request.id == "fails":
            raise RuntimeError("the model failed")


async def test_in_a_pipeline_failures_and_cancellations_give_their_slots_back() -> None:
    model: Any = FakeModel()
    stage = FairShareStage(window=lambda model: 1)
    work = Gate("work")
    pipeline = Pipeline([Gate("resolve", model), stage, work, Gate("respond")])

    def run(request_id: str) -> asyncio.Task[InferenceResponse]:
        return asyncio.ensure_future(pipeline.run(InferenceRequest("m", {}, {}, id=request_id),
                                                  RequestContext("v2-http")))

    failing, cancelled, succeeds = run("fails"), run("cancelled"), run("ok")
    await asyncio.sleep(0.01)
    assert stage.load(model) == (1, 2)
    cancelled.cancel()
    await asyncio.sleep(0.01)
    assert stage.load(model) == (1, 1)
    work.open.set()
    with pytest.raises(Exception, match="the model failed"):
        await failing
    assert (await succeeds).id == "ok"
    assert cancelled.cancelled()
    assert stage.load(model) == (0, 0)
