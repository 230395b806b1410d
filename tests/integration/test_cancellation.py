"""A request whose caller goes away (task cancelled, HTTP client disconnected, gRPC call cancelled) leaves the
queue without running, counts as CANCELED, and does not disturb the requests around it.

The model's only instance is held by a gated execution, so the cancelled request is certainly still queued.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

import inferd
from inferd.frontends.grpc import GrpcFrontend
from inferd.frontends.http import HttpFrontend, HttpServer
from inferd.observability import FailureReason
from inferd.types import InferenceRequest
from recording_backend import recorder, registered, write_recording_model

MODELS = ("cancel_sdk", "cancel_http", "cancel_grpc")


@pytest.fixture(scope="module")
def sdk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[inferd.Server]:
    repo = tmp_path_factory.mktemp("cancel") / "models"
    for name in MODELS:
        write_recording_model(repo, name, max_batch_size=1, gated=True)
    with registered(), inferd.Server(model_repository=repo) as server:
        yield server


def _request(model: str, tag: float) -> InferenceRequest:
    return InferenceRequest(model, {"INPUT0": np.full((1, 4), tag, np.float32)}, {"INPUT0": "FP32"})


async def _pending(sdk: inferd.Server, model: str, count: int) -> None:
    for _ in range(1000):
        if [s.pending for s in sdk.model_statistics() if s.name == model] == [count]:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{model} never had {count} pending requests")


async def _hold(sdk: inferd.Server, model: str) -> asyncio.Future[object]:
    blocker = asyncio.ensure_future(sdk.infer_request(_request(model, -1)))
    assert await asyncio.to_thread(recorder(model).wait_started), "the blocker never started"
    return blocker


def _canceled(sdk: inferd.Server, model: str) -> int:
    stats = next(s for s in sdk.model_statistics() if s.name == model)
    return stats.failures[FailureReason.CANCELED]


async def _finish(sdk: inferd.Server, model: str, blocker: asyncio.Future[object], tag: float) -> None:
    """Open the gate; the blocker and a request sent after the cancellation both complete correctly."""
    after = asyncio.ensure_future(sdk.infer_request(_request(model, tag)))
    await _pending(sdk, model, 2)
    recorder(model).gate.set()
    await blocker
    response = await after
    assert response.outputs["OUTPUT0"][0, 0] == 2 * tag


async def test_cancelled_task_leaves_the_queue(sdk: inferd.Server) -> None:
    model = "cancel_sdk"
    blocker = await _hold(sdk, model)
    doomed = asyncio.ensure_future(sdk.infer_request(_request(model, 7)))
    await _pending(sdk, model, 2)
    doomed.cancel()
    with pytest.raises(asyncio.CancelledError):
        await doomed
    await _finish(sdk, model, blocker, 9)
    assert [e.tags for e in recorder(model).executions] == [[-1], [9]]
    assert _canceled(sdk, model) == 1


async def test_http_client_that_disconnects_leaves_the_queue(sdk: inferd.Server) -> None:
    model = "cancel_http"
    http = HttpServer(HttpFrontend(sdk), "127.0.0.1", 0)
    await http.start()
    try:
        blocker = await _hold(sdk, model)
        body = json.dumps({"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 4],
                                       "data": [7.0] * 4}]}).encode()
        head = (f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: x\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        sock = socket.create_connection(("127.0.0.1", http.port), timeout=10)
        sock.sendall(head + body)
        await _pending(sdk, model, 2)
        sock.close()  # the client goes away while its request is queued
        await _pending(sdk, model, 1)
        await _finish(sdk, model, blocker, 9)
    finally:
        await http.stop(5)
    assert [e.tags for e in recorder(model).executions] == [[-1], [9]]
    assert _canceled(sdk, model) == 1


async def test_grpc_call_cancelled_by_the_client_leaves_the_queue(sdk: inferd.Server) -> None:
    model = "cancel_grpc"
    frontend = GrpcFrontend(sdk, "127.0.0.1", 0)
    frontend.start()
    try:
        blocker = await _hold(sdk, model)
        request = service_pb2.ModelInferRequest(model_name=model)
        tensor = request.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 4])
        tensor.contents.fp32_contents.extend([7.0] * 4)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{frontend.port}") as channel:
            call = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
            await _pending(sdk, model, 2)
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
        await _pending(sdk, model, 1)
        await _finish(sdk, model, blocker, 9)
    finally:
        await asyncio.to_thread(frontend.stop, 5)
    assert [e.tags for e in recorder(model).executions] == [[-1], [9]]
    assert _canceled(sdk, model) == 1
