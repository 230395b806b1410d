"""Many requests at once: every one gets its own right answer, whatever protocol it came in."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aiogrpcclient
import tritonclient.http as httpclient
import tritonclient.http.aio as aiohttpclient

from clients import make_input, simple_data, simple_inputs
from models import SIMPLE, identity_name
from serving import ServerProcess

REQUESTS = 64


def _cases() -> list[tuple[str, int, np.ndarray, np.ndarray]]:
    """(request id, batch size, INPUT0, INPUT1): distinct data and a mix of batch sizes."""
    cases = []
    for i in range(REQUESTS):
        a, b = simple_data(1 + i % 8, seed=1000 + i)
        a[0, 0] = i  # no two requests carry the same data
        cases.append((f"c-{i}", 1 + i % 8, a, b))
    return cases


def _check(cases: list[tuple[str, int, np.ndarray, np.ndarray]], results: list[Any], response_id: Any) -> None:
    assert len(results) == len(cases)
    for (rid, batch, a, b), result in zip(cases, results, strict=True):
        assert response_id(result) == rid
        out0, out1 = result.as_numpy("OUTPUT0"), result.as_numpy("OUTPUT1")
        assert out0.shape == (batch, 16)
        np.testing.assert_array_equal(out0, a + b)
        np.testing.assert_array_equal(out1, a - b)


async def test_http_aio_concurrent_requests(server: ServerProcess) -> None:
    cases = _cases()
    async with aiohttpclient.InferenceServerClient(server.http_url) as client:
        results = await asyncio.gather(*(
            client.infer(SIMPLE, simple_inputs(httpclient, a, b, binary=i % 2 == 0), request_id=rid)
            for i, (rid, _, a, b) in enumerate(cases)))
    _check(cases, results, lambda r: r.get_response()["id"])


async def test_grpc_aio_concurrent_requests(server: ServerProcess) -> None:
    cases = _cases()
    client = aiogrpcclient.InferenceServerClient(server.grpc_url)
    try:
        results = await asyncio.gather(*(
            client.infer(SIMPLE, simple_inputs(grpcclient, a, b), request_id=rid) for rid, _, a, b in cases))
    finally:
        await client.close()
    _check(cases, results, lambda r: r.get_response().id)


async def test_http_and_grpc_at_the_same_time(server: ServerProcess) -> None:
    """Both front doors busy at once, on two models."""
    cases = _cases()
    floats = [np.random.default_rng(i).standard_normal((1 + i % 8, 50)).astype(np.float32) for i in range(REQUESTS)]
    http_client = aiohttpclient.InferenceServerClient(server.http_url)
    grpc_client = aiogrpcclient.InferenceServerClient(server.grpc_url)
    try:
        simple_over_http = [http_client.infer(SIMPLE, simple_inputs(httpclient, a, b), request_id=rid)
                            for rid, _, a, b in cases]
        identity_over_grpc = [grpc_client.infer(identity_name("FP32"),
                                                [make_input(grpcclient, "INPUT0", x, "FP32")])
                              for x in floats]
        results = await asyncio.gather(*simple_over_http, *identity_over_grpc)
    finally:
        await http_client.close()
        await grpc_client.close()
    _check(cases, results[:REQUESTS], lambda r: r.get_response()["id"])
    for x, result in zip(floats, results[REQUESTS:], strict=True):
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), x)


def test_blocking_clients_from_many_threads(server: ServerProcess) -> None:
    cases = _cases()

    def call(case: tuple[str, int, np.ndarray, np.ndarray]) -> Any:
        rid, _, a, b = case
        if int(rid.split("-")[1]) % 2:
            with grpcclient.InferenceServerClient(server.grpc_url) as client:
                return client.infer(SIMPLE, simple_inputs(grpcclient, a, b), request_id=rid)
        client = httpclient.InferenceServerClient(server.http_url)
        try:
            return client.infer(SIMPLE, simple_inputs(httpclient, a, b), request_id=rid)
        finally:
            client.close()

    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(call, cases))

    def response_id(result: Any) -> str:
        response = result.get_response()
        return response["id"] if isinstance(response, dict) else response.id

    _check(cases, results, response_id)
