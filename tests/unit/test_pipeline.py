"""The pipeline's contract with its stages: order, insertion, refusal, finish callbacks, sync and async runs."""

from __future__ import annotations

import asyncio

import pytest

from inferd.pipeline import Call, Pipeline, RequestContext
from inferd.types import ErrorKind, InferenceRequest, InferenceResponse, InferError


class Step:
    def __init__(self, name: str, log: list[str], *, fail: Exception | None = None, wait: bool = False,
                 respond: bool = False, before: str | None = None, after: str | None = None) -> None:
        self.name = name
        self.log = log
        self.fail = fail
        self.wait = wait
        self.respond = respond
        if before is not None:
            self.before = before
        if after is not None:
            self.after = after

    def __call__(self, call: Call) -> object:
        self.log.append(self.name)
        call.on_finish(lambda c: self.log.append(f"finish {self.name}: {type(c.error).__name__}"))
        if self.fail is not None:
            raise self.fail
        if self.respond:
            call.response = InferenceResponse(call.request.model_name, "1", {}, call.request.id)
        if self.wait:
            return self._later()
        return None

    async def _later(self) -> None:
        await asyncio.sleep(0)
        self.log.append(f"{self.name} waited")


def _request() -> InferenceRequest:
    return InferenceRequest("m", {}, {}, id="r1")


def _core(log: list[str]) -> list[Step]:
    return [Step("resolve", log), Step("admit", log), Step("respond", log, respond=True)]


def test_stages_run_in_order_and_finish_in_reverse() -> None:
    log: list[str] = []
    pipeline = Pipeline(_core(log))
    pipeline.insert(Step("auth", log), before="resolve")
    pipeline.insert(Step("audit", log), after="resolve")
    pipeline.insert(Step("limit", log))  # by default before "admit"
    assert pipeline.names == ["auth", "resolve", "audit", "limit", "admit", "respond"]
    response = pipeline.run_sync(_request(), RequestContext("sdk"))
    assert response.id == "r1"
    assert log == ["auth", "resolve", "audit", "limit", "admit", "respond",
                   "finish respond: NoneType", "finish admit: NoneType", "finish limit: NoneType",
                   "finish audit: NoneType", "finish resolve: NoneType", "finish auth: NoneType"]


def test_a_refusing_stage_stops_the_request_and_every_finish_callback_runs() -> None:
    log: list[str] = []
    pipeline = Pipeline(_core(log))
    pipeline.insert(Step("auth", log, fail=InferError(ErrorKind.UNAUTHENTICATED, "no key")), after="resolve")
    with pytest.raises(InferError) as caught:
        asyncio.run(pipeline.run(_request(), RequestContext("v2-http")))
    assert caught.value.kind == ErrorKind.UNAUTHENTICATED
    assert log == ["resolve", "auth", "finish auth: InferError", "finish resolve: InferError"]


def test_a_stage_bug_becomes_an_internal_error_naming_the_model() -> None:
    log: list[str] = []
    pipeline = Pipeline(_core(log))
    pipeline.insert(Step("buggy", log, fail=KeyError("x")))
    with pytest.raises(InferError) as caught:
        pipeline.run_sync(_request(), RequestContext("sdk"))
    assert caught.value.kind == ErrorKind.INTERNAL
    assert caught.value.message == "model 'm' failed: KeyError: 'x'"


def test_awaitable_stages_are_awaited_in_async_and_sync_runs() -> None:
    for sync in (False, True):
        log: list[str] = []
        pipeline = Pipeline(_core(log))
        pipeline.insert(Step("wake", log, wait=True), before="admit")
        if sync:
            pipeline.run_sync(_request(), RequestContext("sdk"))
        else:
            asyncio.run(pipeline.run(_request(), RequestContext("sdk")))
        assert log[:5] == ["resolve", "wake", "wake waited", "admit", "respond"]


def test_sync_run_from_a_thread_with_a_running_loop() -> None:
    """A notebook calls the SDK from a thread whose loop runs: a waiting stage must not re-enter that loop."""
    log: list[str] = []
    pipeline = Pipeline(_core(log))
    pipeline.insert(Step("wake", log, wait=True))

    async def main() -> InferenceResponse:
        return pipeline.run_sync(_request(), RequestContext("sdk"))

    assert asyncio.run(main()).id == "r1"
    assert "wake waited" in log


def test_cancellation_reaches_finish_callbacks() -> None:
    log: list[str] = []
    gate: list[asyncio.Future[None]] = []

    class Hold:
        name = "hold"

        def __call__(self, call: Call) -> object:
            call.on_finish(lambda c: log.append(f"finish hold: {type(c.error).__name__}"))
            gate.append(asyncio.get_running_loop().create_future())
            return gate[0]

    pipeline = Pipeline(_core(log))
    pipeline.insert(Hold())

    async def main() -> None:
        task = asyncio.ensure_future(pipeline.run(_request(), RequestContext("sdk")))
        while not gate:
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert log == ["resolve", "finish hold: CancelledError", "finish resolve: CancelledError"]


def test_insert_checks_names_and_anchors() -> None:
    log: list[str] = []
    pipeline = Pipeline(_core(log))
    with pytest.raises(ValueError, match="unique"):
        pipeline.insert(Step("admit", log))
    with pytest.raises(ValueError, match="no pipeline stage named 'nope'"):
        pipeline.insert(Step("x", log), before="nope")
    with pytest.raises(TypeError):
        pipeline.insert(object())  # type: ignore[arg-type]
    assert pipeline.remove("admit").name == "admit"
    assert pipeline.names == ["resolve", "respond"]


def test_request_context_reads_http_headers_and_grpc_metadata() -> None:
    http = RequestContext("v2-http", {b"authorization": b"Bearer k", b"host": b"a.example"})
    assert http.header("Authorization") == "Bearer k" and http.header("x-missing") is None
    calls: list[int] = []

    def metadata() -> list[tuple[str, str]]:
        calls.append(1)
        return [("x-api-key", "k2"), ("user-agent", "grpc-python")]

    grpc = RequestContext("v2-grpc", metadata=metadata)
    assert calls == []  # nothing read until a stage asks
    assert grpc.header("X-Api-Key") == "k2" and grpc.header("host") is None
