"""The system shared-memory registry and a request's lease on it, without a server: registering, status, bounds,
views of the mapping, outputs written in place, and unmapping (also while views are alive)."""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator
from multiprocessing import shared_memory

import numpy as np
import pytest

from inferd.memory import SharedMemoryLease, SystemSharedMemory, shared_memory_ref
from inferd.types import ErrorKind, InferError, SharedMemoryRef


@pytest.fixture
def segment() -> Iterator[shared_memory.SharedMemory]:
    seg = shared_memory.SharedMemory(f"inferd_unit_{os.getpid()}", create=True, size=8192)
    yield seg
    seg.close()
    seg.unlink()


@pytest.fixture
def registry() -> Iterator[SystemSharedMemory]:
    reg = SystemSharedMemory(enabled=True)  # off unless the server is started with --allow-client-shm=true
    yield reg
    reg.close()


def _key(seg: shared_memory.SharedMemory) -> str:
    return "/" + seg.name.lstrip("/")


def test_register_status_unregister(registry: SystemSharedMemory, segment: shared_memory.SharedMemory) -> None:
    registry.register("r", _key(segment), 100, 256)
    assert registry.status() == [{"name": "r", "key": _key(segment), "offset": 100, "byte_size": 256}]
    assert registry.status("r") == registry.status()
    with pytest.raises(InferError, match="already registered"):
        registry.register("r", _key(segment), 0, 16)
    registry.unregister("r")
    registry.unregister("r")  # again: nothing to do
    assert registry.status() == []
    with pytest.raises(InferError, match="unable to find system shared memory region: 'r'"):
        registry.status("r")


def test_regions_are_kept_per_owner(registry: SystemSharedMemory, segment: shared_memory.SharedMemory) -> None:
    registry.register("r", _key(segment), 0, 64, owner="tenant-a")
    registry.register("r", _key(segment), 64, 64, owner="tenant-b")
    assert [r["offset"] for r in registry.status(owner="tenant-a")] == [0]
    assert registry.status() == []
    with pytest.raises(InferError, match="not registered"):
        registry.acquire("r")
    registry.unregister(owner="tenant-a")
    assert registry.status(owner="tenant-a") == [] and len(registry.status(owner="tenant-b")) == 1


@pytest.mark.parametrize(("key", "offset", "size", "words"), [
    ("/inferd_unit_missing", 0, 16, "does not exist"),
    (None, 0, 9000, "past the end"),
    (None, 8000, 500, "past the end"),
    (None, -1, 16, "'offset'"),
    (None, 0, 0, "'byte_size'"),
    ("", 0, 16, "'key'"),
])
def test_register_errors(registry: SystemSharedMemory, segment: shared_memory.SharedMemory, key: str | None,
                         offset: int, size: int, words: str) -> None:
    with pytest.raises(InferError, match=words) as caught:
        registry.register("r", _key(segment) if key is None else key, offset, size)
    assert caught.value.kind == ErrorKind.INVALID_ARGUMENT
    assert registry.status() == []


def test_inputs_are_read_only_views_and_outputs_are_written_in_place(
        registry: SystemSharedMemory, segment: shared_memory.SharedMemory) -> None:
    start = 4096 + 12  # a region that does not start on a page
    data = np.arange(8, dtype=np.int32)
    segment.buf[start:start + 32] = data.tobytes()
    registry.register("r", _key(segment), start, 128)
    lease = SharedMemoryLease(registry)
    array = lease.read_input("X", "INT32", (2, 4), SharedMemoryRef("r", 32))
    np.testing.assert_array_equal(array, data.reshape(2, 4))
    assert not array.flags.writeable and not array.flags.owndata
    segment.buf[start:start + 4] = np.int32(99).tobytes()
    assert array[0, 0] == 99  # a view of the client's memory, not a copy
    lease.place_output("Y", SharedMemoryRef("r", 64, offset=32))
    written = lease.finish({"Y": np.full((2, 4), 7, np.int64)})
    assert written == {"Y": SharedMemoryRef("r", 64, offset=32)}
    np.testing.assert_array_equal(np.frombuffer(segment.buf[start + 32:start + 96], np.int64), np.full(8, 7))
    lease.release()
    del array


def test_bytes_and_size_checks(registry: SystemSharedMemory, segment: shared_memory.SharedMemory) -> None:
    registry.register("r", _key(segment), 0, 64)
    segment.buf[0:10] = b"\x02\x00\x00\x00hi\x00\x00\x00\x00"
    lease = SharedMemoryLease(registry)
    assert lease.read_input("S", "BYTES", (2,), SharedMemoryRef("r", 10)).tolist() == [b"hi", b""]
    with pytest.raises(InferError, match="unexpected total byte size 12"):
        lease.read_input("X", "INT32", (4,), SharedMemoryRef("r", 12))
    with pytest.raises(InferError, match="runs past the end of region 'r'"):
        lease.read_input("X", "INT32", (4,), SharedMemoryRef("r", 16, offset=56))
    lease.place_output("Y", SharedMemoryRef("r", 8))
    with pytest.raises(InferError, match="needs 16 bytes"):
        lease.finish({"Y": np.zeros(4, np.int32)})
    lease.release()


def test_unregistered_while_held(registry: SystemSharedMemory, segment: shared_memory.SharedMemory) -> None:
    registry.register("r", _key(segment), 0, 64)
    lease = SharedMemoryLease(registry)
    view = lease.read_input("X", "UINT8", (4,), SharedMemoryRef("r", 4))
    region = registry.acquire("r")
    registry.release(region)
    registry.unregister("r")
    assert registry.status() == [] and region.buffer is not None  # still mapped: the request holds it
    with pytest.raises(InferError, match="unregistered while this request was using it"):
        lease.finish({})
    lease.release()
    assert region.buffer is None  # closed once the last holder let go
    assert view.tolist() == [0, 0, 0, 0]  # a view that outlives it keeps the memory mapped, never dangling
    del view
    gc.collect()


def test_disabled() -> None:
    registry = SystemSharedMemory()  # the default, as Triton 26.04+
    with pytest.raises(InferError, match="--allow-client-shm") as caught:
        registry.register("r", "/x", 0, 8)
    assert caught.value.kind == ErrorKind.PERMISSION_DENIED
    with pytest.raises(InferError, match="--allow-client-shm") as caught:  # at inference: no such region
        registry.acquire("r")
    assert caught.value.kind == ErrorKind.INVALID_ARGUMENT
    assert registry.status() == []
    registry.unregister()


@pytest.mark.parametrize(("params", "expected"), [
    ({}, None),
    ({"binary_data": True}, None),
    ({"shared_memory_region": "r", "shared_memory_byte_size": 8}, SharedMemoryRef("r", 8, 0)),
    ({"shared_memory_region": "r", "shared_memory_byte_size": 8, "shared_memory_offset": 4},
     SharedMemoryRef("r", 8, 4)),
])
def test_parameters(params: dict[str, object], expected: SharedMemoryRef | None) -> None:
    assert shared_memory_ref("input 'X'", params) == expected


@pytest.mark.parametrize("params", [
    {"shared_memory_region": "r"},
    {"shared_memory_byte_size": 8},
    {"shared_memory_offset": 8},
    {"shared_memory_region": "", "shared_memory_byte_size": 8},
    {"shared_memory_region": "r", "shared_memory_byte_size": -1},
    {"shared_memory_region": "r", "shared_memory_byte_size": "8"},
])
def test_bad_parameters(params: dict[str, object]) -> None:
    with pytest.raises(InferError, match="input 'X'"):
        shared_memory_ref("input 'X'", params)
