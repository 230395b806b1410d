"""Over the wire with tritonclient: Triton's restricted API groups (HTTP 403 / gRPC UNAVAILABLE without the
header, served with it, other groups open) and the refusal of uploaded code unless `--allow-code-upload`
(issue 17, finding 1)."""

from __future__ import annotations

import json
import queue
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from clients import simple_data, simple_inputs
from models import SIMPLE, add_simple
from serving import ServerProcess, start_server


# Functions, not dicts: tritonclient's HTTP client adds its own headers to the dict it is given.
def admin_headers() -> dict[str, str]:
    return {"admin-key": "admin-value"}


def infer_headers() -> dict[str, str]:
    return {"infer-key": "infer-value"}


def grpc_admin_headers() -> dict[str, str]:
    return {"triton-grpc-protocol-admin-key": "admin-value"}


def grpc_infer_headers() -> dict[str, str]:
    return {"triton-grpc-protocol-infer-key": "infer-value"}


RESTRICTIONS = (
    "--http-restricted-api=model-repository,shared-memory:admin-key=admin-value",
    "--http-restricted-api=inference:infer-key=infer-value",
    "--grpc-restricted-protocol=model-repository:admin-key=admin-value",
    "--grpc-restricted-protocol=inference,health:infer-key=infer-value",
)


def _python_model(marker: Path) -> bytes:
    """A Python model that leaves `marker` behind when its code runs."""
    return textwrap.dedent(f"""
        from pathlib import Path

        import numpy as np

        Path({str(marker)!r}).write_text("ran")


        class Doubler:
            def predict(self, inputs):
                return {{"y": inputs["x"] * np.float32(2)}}
    """).encode()


def _python_config(name: str) -> str:
    return json.dumps({"name": name, "backend": "python", "max_batch_size": 0,
                       "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [2]}],
                       "output": [{"name": "y", "data_type": "TYPE_FP32", "dims": [2]}]})


@pytest.fixture(scope="module")
def restricted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Explicit mode, restricted groups, no --allow-code-upload, on 127.0.0.1."""
    root = tmp_path_factory.mktemp("restricted")
    add_simple(root / "models")
    process = start_server(root / "models", root / "inferd.log", "--model-control-mode=explicit",
                           "--load-model", SIMPLE, *RESTRICTIONS)
    yield process
    process.stop()


def _http_error(call: Any) -> httpclient.InferenceServerException:
    with pytest.raises(httpclient.InferenceServerException) as exc:
        call()
    return exc.value


def _grpc_error(call: Any) -> grpcclient.InferenceServerException:
    with pytest.raises(grpcclient.InferenceServerException) as exc:
        call()
    return exc.value


def test_http_restricted_groups(restricted: ServerProcess) -> None:
    client = httpclient.InferenceServerClient(restricted.http_url)
    inputs = simple_inputs(httpclient, *simple_data(1))
    try:
        error = _http_error(lambda: client.unload_model(SIMPLE))
        assert error.status() == "403" and "This API is restricted, expecting header 'admin-key'" in error.message()
        assert _http_error(lambda: client.unload_model(SIMPLE, headers=infer_headers())).status() == "403"
        assert _http_error(lambda: client.get_model_repository_index()).status() == "403"
        assert _http_error(lambda: client.get_system_shared_memory_status()).status() == "403"
        assert _http_error(lambda: client.infer(SIMPLE, inputs)).status() == "403"
        assert _http_error(lambda: client.infer(SIMPLE, inputs, headers=admin_headers())).status() == "403"
        # With the header, served.
        assert [m["name"] for m in client.get_model_repository_index(headers=admin_headers())] == [SIMPLE]
        client.load_model(SIMPLE, headers=admin_headers())
        assert client.infer(SIMPLE, inputs, headers=infer_headers()).as_numpy("OUTPUT0").shape == (1, 16)
        # Groups nobody restricted stay open (health is restricted over gRPC only).
        assert client.is_server_live() and client.is_model_ready(SIMPLE)
        assert client.get_server_metadata()["name"]
        assert client.get_model_config(SIMPLE)["name"] == SIMPLE
        assert client.get_inference_statistics(SIMPLE)["model_stats"]
    finally:
        client.close()


def test_grpc_restricted_groups(restricted: ServerProcess) -> None:
    client = grpcclient.InferenceServerClient(restricted.grpc_url)
    inputs = simple_inputs(grpcclient, *simple_data(1))
    try:
        error = _grpc_error(lambda: client.unload_model(SIMPLE))
        assert error.status() == "StatusCode.UNAVAILABLE"
        assert "This protocol is restricted, expecting header 'triton-grpc-protocol-admin-key'" in error.message()
        unavailable = "StatusCode.UNAVAILABLE"
        assert _grpc_error(lambda: client.load_model(SIMPLE, headers=grpc_infer_headers())).status() == unavailable
        assert _grpc_error(lambda: client.infer(SIMPLE, inputs)).status() == unavailable
        assert _grpc_error(lambda: client.is_server_live()).status() == unavailable
        # Only the gRPC form of the key counts over gRPC.
        assert _grpc_error(lambda: client.infer(SIMPLE, inputs, headers=infer_headers())).status() == unavailable
        # With the metadata, served.
        client.load_model(SIMPLE, headers=grpc_admin_headers())
        assert client.infer(SIMPLE, inputs, headers=grpc_infer_headers()).as_numpy("OUTPUT0").shape == (1, 16)
        assert client.is_server_live(headers=grpc_infer_headers())
        # Streams are checked too.
        answers: queue.Queue[Any] = queue.Queue()
        client.start_stream(lambda result, error: answers.put(error or result))
        try:
            client.async_stream_infer(SIMPLE, inputs)
        except grpcclient.InferenceServerException:
            pass  # the stream ended before the request went out: the callback has the reason
        refused = answers.get(timeout=30)
        client.stop_stream()
        assert isinstance(refused, grpcclient.InferenceServerException)
        assert "This protocol is restricted" in refused.message()
        client.start_stream(lambda result, error: answers.put(error or result), headers=grpc_infer_headers())
        client.async_stream_infer(SIMPLE, inputs)
        served = answers.get(timeout=30)
        client.stop_stream()
        assert served.as_numpy("OUTPUT0").shape == (1, 16)
        # Groups nobody restricted stay open.
        assert client.get_server_metadata().name
        assert client.get_model_config(SIMPLE).config.name == SIMPLE
        assert client.get_inference_statistics(SIMPLE).model_stats
        assert client.get_system_shared_memory_status() is not None  # restricted over HTTP only
    finally:
        client.close()


def test_uploaded_code_is_refused_without_the_flag(restricted: ServerProcess, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    files = {"file:1/model.py": _python_model(marker)}
    http = httpclient.InferenceServerClient(restricted.http_url)
    grpc = grpcclient.InferenceServerClient(restricted.grpc_url)
    try:
        error = _http_error(lambda: http.load_model("evil", config=_python_config("evil"), files=files,
                                                    headers=admin_headers()))
        assert error.status() == "403" and "--allow-code-upload" in error.message()
        error = _grpc_error(lambda: grpc.load_model("evil", config=_python_config("evil"), files=files,
                                                    headers=grpc_admin_headers()))
        assert error.status() == "StatusCode.PERMISSION_DENIED" and "--allow-code-upload" in error.message()
        assert not marker.exists()
        assert not http.is_model_ready("evil")
    finally:
        http.close()
        grpc.close()
    # The repository API listens on 127.0.0.1 only, and is restricted anyway: no warning.
    assert "model repository API (model load / unload) is open" not in restricted.log()


def test_uploaded_code_is_loaded_with_the_flag(tmp_path: Path) -> None:
    add_simple(tmp_path / "models")
    process = start_server(tmp_path / "models", tmp_path / "inferd.log", "--model-control-mode=explicit",
                           "--allow-code-upload")
    http = httpclient.InferenceServerClient(process.http_url)
    grpc = grpcclient.InferenceServerClient(process.grpc_url)
    x = np.array([1.5, 2.0], dtype=np.float32)
    try:
        for name, client, module in (("up_http", http, httpclient), ("up_grpc", grpc, grpcclient)):
            marker = tmp_path / f"{name}.ran"
            client.load_model(name, config=_python_config(name), files={"file:1/model.py": _python_model(marker)})
            assert marker.read_text() == "ran"
            tensor = module.InferInput("x", [2], "FP32")
            tensor.set_data_from_numpy(x)
            np.testing.assert_array_equal(client.infer(name, [tensor]).as_numpy("y"), x * 2)
    finally:
        http.close()
        grpc.close()
        process.stop()
