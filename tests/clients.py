"""Small helpers shared by the client tests (tritonclient HTTP and gRPC take the same shapes of calls)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np


class SyncAsAsync:
    """A blocking tritonclient with awaitable methods, so one test body covers it and its `aio` twin."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Callable[..., Awaitable[Any]]:
        method = getattr(self._client, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            return method(*args, **kwargs)

        return call


def make_input(module: Any, name: str, array: np.ndarray, datatype: str, binary: bool | None = None) -> Any:
    """`module.InferInput` holding `array` (`binary` only for the HTTP client)."""
    tensor = module.InferInput(name, list(array.shape), datatype)
    if binary is None:
        tensor.set_data_from_numpy(array)
    else:
        tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


def simple_data(batch: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two INT32 [batch, 16] inputs for `simple`, distinct per seed."""
    rng = np.random.default_rng(seed)
    a = rng.integers(-1000, 1000, (batch, 16), dtype=np.int32)
    b = rng.integers(-1000, 1000, (batch, 16), dtype=np.int32)
    return a, b


def simple_inputs(module: Any, a: np.ndarray, b: np.ndarray, binary: bool | None = None) -> list[Any]:
    return [make_input(module, "INPUT0", a, "INT32", binary), make_input(module, "INPUT1", b, "INT32", binary)]


def infer_tensors(protocol: str, server: Any, model: str, inputs: dict[str, tuple[np.ndarray, str]],
                  outputs: list[str]) -> dict[str, np.ndarray]:
    """One call with tritonclient's `protocol` ("http" or "grpc") client: {name: (array, datatype)} in, arrays out."""
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    module: Any = httpclient if protocol == "http" else grpcclient
    client = module.InferenceServerClient(server.http_url if protocol == "http" else server.grpc_url)
    try:
        tensors = [make_input(module, name, array, datatype) for name, (array, datatype) in inputs.items()]
        result = client.infer(model, tensors, outputs=[module.InferRequestedOutput(name) for name in outputs])
        return {name: result.as_numpy(name) for name in outputs}
    finally:
        client.close()


def unavailable_reason(base_url: str, name: str) -> str:
    """The reason the repository index gives for a model that must be UNAVAILABLE."""
    import httpx

    rows = httpx.post(f"{base_url}/v2/repository/index", timeout=30).json()
    row = next(r for r in rows if r["name"] == name)
    assert row.get("state") == "UNAVAILABLE", row
    return str(row.get("reason", ""))
