"""Client shared memory is off by default, never reaches the server's own segments, and holds a bounded number of
regions (each keeps a file descriptor): the registry's limits, without a server, and the server's defaults."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from multiprocessing import shared_memory
from pathlib import Path

import pytest

from inferd.cli import build_parser
from inferd.memory import SystemSharedMemory
from inferd.memory.arenas import SHM_PREFIX, ServerArena, is_server_segment
from inferd.memory.system import DEFAULT_MAX_SHM_REGIONS
from inferd.server import Server
from inferd.types import ErrorKind, InferError


@pytest.fixture
def segment() -> Iterator[shared_memory.SharedMemory]:
    seg = shared_memory.SharedMemory(f"inferd_limits_{os.getpid()}", create=True, size=4096)
    yield seg
    seg.close()
    seg.unlink()


@pytest.fixture
def arena() -> Iterator[ServerArena]:
    """A real instance arena of this process, as the server makes them (`/inferd-<pid>-<random>`)."""
    made = ServerArena()
    made.ensure(4096)
    yield made
    made.release()


def _key(seg: shared_memory.SharedMemory) -> str:
    return "/" + seg.name.lstrip("/")


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# ---- off by default ----

def test_registry_is_off_by_default(segment: shared_memory.SharedMemory) -> None:
    registry = SystemSharedMemory()
    with pytest.raises(InferError, match="--allow-client-shm=true") as caught:
        registry.register("r", _key(segment), 0, 64)
    assert caught.value.kind == ErrorKind.PERMISSION_DENIED
    assert registry.status() == []


def test_server_and_cli_default_to_off(tmp_path: Path) -> None:
    server = Server(tmp_path, start=False)
    try:
        assert not server.shared_memory.enabled
        assert "system_shared_memory" not in server.metadata()["extensions"]
    finally:
        server.close()
    server = Server(tmp_path, start=False, allow_client_shm=True)
    try:
        assert "system_shared_memory" in server.metadata()["extensions"]
    finally:
        server.close()
    parser = build_parser()
    assert parser.parse_args(["serve", "--model-repository", str(tmp_path)]).allow_client_shm is False
    assert parser.parse_args(["serve", "--model-repository", str(tmp_path), "--allow-client-shm=true"]
                             ).allow_client_shm is True


# ---- the server's own segments ----

def test_own_segment_names() -> None:
    own = f"{SHM_PREFIX}{os.getpid()}-0123456789ab"
    for key in (f"/{own}", own, f"//{own}", f"///{own}", f"/{SHM_PREFIX}1-x", f"/{SHM_PREFIX}"):
        assert is_server_segment(key), key
    for key in ("/victim", "/inferd_test_region", "/inferdx-1-2", "/my-inferd-1-2", "/Inferd-1-2"):
        assert not is_server_segment(key), key


def test_the_servers_own_arenas_can_never_be_registered(arena: ServerArena) -> None:
    """However the name is spelled (shm_open ignores leading slashes), mapping nothing and holding nothing."""
    registry = SystemSharedMemory(enabled=True)
    name = arena.name
    assert name is not None and name.lstrip("/").startswith(SHM_PREFIX)
    bare = name.lstrip("/")
    before = _open_fds()
    for key in (f"/{bare}", bare, f"//{bare}", f"////{bare}"):
        with pytest.raises(InferError) as caught:
            registry.register("stolen", key, 0, 64)
        assert caught.value.kind == ErrorKind.PERMISSION_DENIED, key
        assert "server's own segments" in caught.value.message and key in caught.value.message
    # Even in the namespace with no such segment: the prefix is the server's, whatever exists under it.
    with pytest.raises(InferError, match="server's own segments"):
        registry.register("future", f"/{SHM_PREFIX}{os.getpid()}-feedfacecafe", 0, 64)
    assert registry.status() == [] and len(registry) == 0
    assert _open_fds() == before


# ---- a bounded number of regions ----

def test_default_cap() -> None:
    assert SystemSharedMemory().max_regions == DEFAULT_MAX_SHM_REGIONS == 128
    with pytest.raises(ValueError):
        SystemSharedMemory(max_regions=-1)


def test_regions_past_the_cap_are_refused(segment: shared_memory.SharedMemory) -> None:
    registry = SystemSharedMemory(enabled=True, max_regions=3)
    try:
        for i in range(3):
            registry.register(f"r{i}", _key(segment), 64 * i, 64)
        before = _open_fds()
        with pytest.raises(InferError, match="3 system shared memory regions are registered") as caught:
            registry.register("r3", _key(segment), 0, 64)
        assert caught.value.kind == ErrorKind.RESOURCE_EXHAUSTED
        assert caught.value.kind.http_status == 429 and caught.value.kind.grpc_code_name == "RESOURCE_EXHAUSTED"
        with pytest.raises(InferError, match="registered"):  # owners share the one cap: FDs are the server's
            registry.register("r0", _key(segment), 0, 64, owner="tenant")
        assert _open_fds() == before  # nothing was opened for the refused registrations
        assert [r["name"] for r in registry.status()] == ["r0", "r1", "r2"]
        registry.unregister("r1")  # room again
        registry.register("r3", _key(segment), 0, 64)
        assert len(registry) == 3
        registry.unregister()
        for i in range(3):
            registry.register(f"again{i}", _key(segment), 0, 64)
    finally:
        registry.close()


def test_each_region_holds_one_descriptor_until_unregistered(segment: shared_memory.SharedMemory) -> None:
    """Why the cap: a registered region keeps its mapping's file descriptor open."""
    registry = SystemSharedMemory(enabled=True, max_regions=DEFAULT_MAX_SHM_REGIONS)
    before = _open_fds()
    try:
        for i in range(DEFAULT_MAX_SHM_REGIONS):
            registry.register(f"r{i}", _key(segment), 0, 64)
        assert _open_fds() - before <= DEFAULT_MAX_SHM_REGIONS
        with pytest.raises(InferError) as caught:
            registry.register("one_more", _key(segment), 0, 64)
        assert caught.value.kind == ErrorKind.RESOURCE_EXHAUSTED
    finally:
        registry.close()
    assert _open_fds() == before


def test_a_zero_cap_refuses_every_region(segment: shared_memory.SharedMemory) -> None:
    registry = SystemSharedMemory(enabled=True, max_regions=0)
    with pytest.raises(InferError) as caught:
        registry.register("r", _key(segment), 0, 64)
    assert caught.value.kind == ErrorKind.RESOURCE_EXHAUSTED


def test_concurrent_registrations_never_pass_the_cap(segment: shared_memory.SharedMemory) -> None:
    """A place under the cap is taken before the region is mapped: racing registrations cannot overshoot it."""
    registry = SystemSharedMemory(enabled=True, max_regions=5)
    outcomes: list[str] = []
    start = threading.Barrier(32)

    def register(i: int) -> None:
        start.wait()
        try:
            registry.register(f"r{i}", _key(segment), 0, 64)
            outcomes.append("ok")
        except InferError as exc:
            outcomes.append(exc.kind.name)

    threads = [threading.Thread(target=register, args=(i,)) for i in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert sorted(outcomes) == ["RESOURCE_EXHAUSTED"] * 27 + ["ok"] * 5
        assert len(registry) == 5
    finally:
        registry.close()
