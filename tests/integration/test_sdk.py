"""The in-process SDK: `inferd.Server` over a repository, without sockets."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import inferd
from inferd import ErrorKind, InferError
from models import (
    AUTO,
    BROKEN,
    DATATYPES,
    NOBATCH,
    SIMPLE,
    SIMPLE_STRING,
    VERSIONED,
    identity_name,
    sample,
)


@pytest.fixture(scope="module")
def sdk(model_repository: Path) -> Iterator[inferd.Server]:
    with inferd.Server(model_repository=model_repository, strict_readiness=False) as server:
        yield server


def _simple(batch: int = 2) -> dict[str, np.ndarray]:
    a = np.arange(batch * 16, dtype=np.int32).reshape(batch, 16)
    return {"INPUT0": a, "INPUT1": np.full((batch, 16), 7, dtype=np.int32)}


def _raises(kind: ErrorKind, call: Callable[..., Any], *args: Any, **kwargs: Any) -> InferError:
    with pytest.raises(InferError) as exc:
        call(*args, **kwargs)
    assert exc.value.kind is kind, exc.value.message
    assert exc.value.message
    return exc.value


def test_health_and_metadata(sdk: inferd.Server) -> None:
    assert sdk.live()
    assert sdk.ready()
    metadata = sdk.metadata()
    assert metadata["name"] == "inferd"
    assert metadata["version"] == inferd.__version__
    assert "model_repository" in metadata["extensions"]


def test_model_metadata_and_config(sdk: inferd.Server) -> None:
    metadata = sdk.model_metadata(SIMPLE)
    assert metadata["name"] == SIMPLE
    assert metadata["versions"] == ["1"]
    assert [i["shape"] for i in metadata["inputs"]] == [[-1, 16], [-1, 16]]
    config = sdk.model_config(SIMPLE)
    assert config.max_batch_size == 8
    assert [i.name for i in config.input] == ["INPUT0", "INPUT1"]
    assert sdk.model_config_json(SIMPLE)["input"][0]["dims"] == [16]
    assert sdk.model_config(AUTO).max_batch_size > 0
    assert sdk.model_ready(SIMPLE)
    assert not sdk.model_ready(BROKEN)
    assert not sdk.model_ready("no_such_model")


def test_repository_index(sdk: inferd.Server) -> None:
    rows = sdk.repository_index()
    states = {(r["name"], r.get("version", "")): r["state"] for r in rows}
    assert states[(SIMPLE, "1")] == "READY"
    assert any(r["name"] == BROKEN and r["state"] == "UNAVAILABLE" and r["reason"] for r in rows)
    ready = sdk.repository_index(ready_only=True)
    assert ready and all(r["state"] == "READY" for r in ready)
    assert BROKEN not in {r["name"] for r in ready}


def test_infer_sync(sdk: inferd.Server) -> None:
    inputs = _simple(3)
    response = sdk.infer(SIMPLE, inputs, request_id="sdk-1")
    assert response.model_name == SIMPLE
    assert response.model_version == "1"
    assert response.id == "sdk-1"
    np.testing.assert_array_equal(response.outputs["OUTPUT0"], inputs["INPUT0"] + inputs["INPUT1"])
    np.testing.assert_array_equal(response.outputs["OUTPUT1"], inputs["INPUT0"] - inputs["INPUT1"])


async def test_infer_async(sdk: inferd.Server) -> None:
    batches = [_simple(b) for b in range(1, 9)]
    responses = await asyncio.gather(*(sdk.infer_async(SIMPLE, inputs) for inputs in batches))
    for inputs, response in zip(batches, responses, strict=True):
        np.testing.assert_array_equal(response.outputs["OUTPUT0"], inputs["INPUT0"] + inputs["INPUT1"])


def test_outputs_subset(sdk: inferd.Server) -> None:
    inputs = _simple()
    response = sdk.infer(SIMPLE, inputs, outputs=["OUTPUT1"])
    assert list(response.outputs) == ["OUTPUT1"]
    np.testing.assert_array_equal(response.outputs["OUTPUT1"], inputs["INPUT0"] - inputs["INPUT1"])


def test_inputs_as_lists(sdk: inferd.Server) -> None:
    response = sdk.infer(NOBATCH, {"INPUT0": np.array([[1, 2, 3], [4, 5, 6]], dtype=np.float32)})
    assert response.outputs["OUTPUT0"].tolist() == [[2, 4, 6], [8, 10, 12]]


@pytest.mark.parametrize("datatype", list(DATATYPES))
def test_every_datatype(sdk: inferd.Server, datatype: str) -> None:
    array = sample(datatype, (2, 3), seed=4)
    out = sdk.infer(identity_name(datatype), {"INPUT0": array}).outputs["OUTPUT0"]
    assert out.shape == (2, 3)
    if datatype == "BYTES":
        assert out.tolist() == array.tolist()
    else:
        assert out.dtype == array.dtype
        np.testing.assert_array_equal(out, array)


def test_strings_become_bytes(sdk: inferd.Server) -> None:
    words = np.array([[f"wörd{i}" for i in range(16)]])
    out = sdk.infer(SIMPLE_STRING, {"INPUT0": words}).outputs["OUTPUT0"]
    assert out.tolist() == [[w.encode() for w in words[0]]]


def test_versions(sdk: inferd.Server) -> None:
    x = np.array([[5, 6]], dtype=np.int32)
    assert sdk.infer(VERSIONED, {"INPUT0": x}, version="1").outputs["OUTPUT0"].tolist() == [[6, 7]]
    assert sdk.infer(VERSIONED, {"INPUT0": x}, version="2").outputs["OUTPUT0"].tolist() == [[7, 8]]
    assert sdk.infer(VERSIONED, {"INPUT0": x}, version=2).outputs["OUTPUT0"].tolist() == [[7, 8]]  # type: ignore[arg-type]
    response = sdk.infer(VERSIONED, {"INPUT0": x})
    assert response.model_version == "2"
    assert response.outputs["OUTPUT0"].tolist() == [[7, 8]]


# ---- errors ----

def test_unknown_model(sdk: inferd.Server) -> None:
    error = _raises(ErrorKind.NOT_FOUND, sdk.infer, "no_such_model", _simple())
    assert error.message == "Request for unknown model: 'no_such_model' is not found"
    _raises(ErrorKind.NOT_FOUND, sdk.model_metadata, "no_such_model")


def test_unknown_version(sdk: inferd.Server) -> None:
    _raises(ErrorKind.NOT_FOUND, sdk.infer, SIMPLE, _simple(), version="4")


def test_broken_model(sdk: inferd.Server) -> None:
    with pytest.raises(InferError) as exc:
        sdk.infer(BROKEN, _simple())
    assert exc.value.kind in (ErrorKind.NOT_FOUND, ErrorKind.UNAVAILABLE)
    assert BROKEN in exc.value.message


@pytest.mark.parametrize("case", ["shape", "datatype", "batch", "missing", "extra", "output", "no_batch_dim"])
def test_invalid_requests(sdk: inferd.Server, case: str) -> None:
    inputs = _simple()
    outputs = None
    if case == "shape":
        inputs["INPUT0"] = np.zeros((2, 15), dtype=np.int32)
    elif case == "datatype":
        inputs["INPUT1"] = inputs["INPUT1"].astype(np.float32)
    elif case == "batch":
        inputs = _simple(9)
    elif case == "missing":
        del inputs["INPUT1"]
    elif case == "extra":
        inputs["INPUT2"] = inputs["INPUT0"]
    elif case == "output":
        outputs = ["OUTPUT7"]
    elif case == "no_batch_dim":
        inputs = {k: v[0] for k, v in inputs.items()}
    _raises(ErrorKind.INVALID_ARGUMENT, sdk.infer, SIMPLE, inputs, outputs=outputs)
    # and the model still answers
    good = _simple()
    np.testing.assert_array_equal(sdk.infer(SIMPLE, good).outputs["OUTPUT0"], good["INPUT0"] + good["INPUT1"])


async def test_errors_are_raised_by_infer_async_too(sdk: inferd.Server) -> None:
    with pytest.raises(InferError) as exc:
        await sdk.infer_async("no_such_model", _simple())
    assert exc.value.kind is ErrorKind.NOT_FOUND
    with pytest.raises(InferError) as exc:
        await sdk.infer_async(SIMPLE, {"INPUT0": np.zeros((1, 16), dtype=np.int32)})
    assert exc.value.kind is ErrorKind.INVALID_ARGUMENT


def test_strict_readiness(model_repository: Path) -> None:
    with inferd.Server(model_repository=model_repository, model_control_mode="explicit",
                       load_models=[SIMPLE]) as strict:
        assert strict.live()
        assert strict.ready()  # explicit mode: only the models asked for count
    with inferd.Server(model_repository=model_repository, model_control_mode="explicit",
                       load_models=[SIMPLE, BROKEN]) as strict:
        assert not strict.ready()


def test_load_and_unload_need_explicit_mode(sdk: inferd.Server) -> None:
    _raises(ErrorKind.UNAVAILABLE, sdk.load, SIMPLE)
    _raises(ErrorKind.UNAVAILABLE, sdk.unload, SIMPLE)
    assert sdk.model_ready(SIMPLE)


# ---- explicit model control ----

def test_explicit_load_and_unload(model_repository: Path) -> None:
    with inferd.Server(model_repository=model_repository, model_control_mode="explicit",
                       load_models=[SIMPLE]) as server:
        assert server.model_ready(SIMPLE)
        assert not server.model_ready(AUTO)
        _raises(ErrorKind.NOT_FOUND, server.infer, AUTO, {"INPUT0": np.zeros((1, 4), dtype=np.float32)})

        server.load(AUTO)
        assert server.model_ready(AUTO)
        x = np.array([[1, 2, 3, 4]], dtype=np.float32)
        np.testing.assert_array_equal(server.infer(AUTO, {"INPUT0": x}).outputs["OUTPUT0"], -x)

        server.unload(SIMPLE)
        assert not server.model_ready(SIMPLE)
        with pytest.raises(InferError) as exc:
            server.infer(SIMPLE, _simple())
        assert exc.value.kind in (ErrorKind.NOT_FOUND, ErrorKind.UNAVAILABLE)
        assert AUTO in {r["name"] for r in server.repository_index(ready_only=True)}
        assert SIMPLE not in {r["name"] for r in server.repository_index(ready_only=True)}

        server.load(SIMPLE)  # back again
        inputs = _simple()
        np.testing.assert_array_equal(server.infer(SIMPLE, inputs).outputs["OUTPUT0"],
                                      inputs["INPUT0"] + inputs["INPUT1"])


def test_explicit_load_failures(model_repository: Path) -> None:
    with inferd.Server(model_repository=model_repository, model_control_mode="explicit") as server:
        assert server.repository_index(ready_only=True) == []
        error = _raises(ErrorKind.INVALID_ARGUMENT, server.load, BROKEN)
        assert "not_a_field" in error.message
        _raises(ErrorKind.NOT_FOUND, server.load, "no_such_model")
        _raises(ErrorKind.NOT_FOUND, server.unload, "no_such_model")
        assert not server.model_ready(BROKEN)


def test_explicit_load_with_a_config_override(model_repository: Path) -> None:
    with inferd.Server(model_repository=model_repository, model_control_mode="explicit",
                       load_models=[SIMPLE]) as server:
        config = server.model_config_json(SIMPLE)
        config["max_batch_size"] = 2
        server.load(SIMPLE, config)
        assert server.model_config(SIMPLE).max_batch_size == 2
        _raises(ErrorKind.INVALID_ARGUMENT, server.infer, SIMPLE, _simple(3))
        inputs = _simple(2)
        np.testing.assert_array_equal(server.infer(SIMPLE, inputs).outputs["OUTPUT0"],
                                      inputs["INPUT0"] + inputs["INPUT1"])
        _raises(ErrorKind.INVALID_ARGUMENT, server.load, SIMPLE, '{"not_a_field": 1}')
        assert server.model_ready(SIMPLE), "a failed reload leaves the serving model as it was"


def test_bad_control_mode(model_repository: Path) -> None:
    with pytest.raises(ValueError):
        inferd.Server(model_repository=model_repository, model_control_mode="sometimes")
