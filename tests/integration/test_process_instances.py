"""Instance processes: a GIL-bound backend (plain Python) runs each instance in a child process of its own.

The GIL-bound test backend (tests/gil_backend.py) reports the process that executed each row, when, how large
the batch was and whether its input arrived as a view of shared memory. Served in-process through the
`inferd.Server` SDK; the tests look at the server's child processes and at /dev/shm directly.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from multiprocessing.shared_memory import SharedMemory
from pathlib import Path

import numpy as np
import pytest

import inferd
from gil_backend import registered, write_gil_model, write_gil_text_model
from inferd.instances.process import SHM_PREFIX, ProcessInstance
from recording_backend import RecordingBackend, write_recording_model
from recording_backend import registered as recording_registered

BATCHED = "gil_batched"  # two instances sharing a dynamic-batching queue
BUSY = "gil_busy"  # two instances, no batching, each execution busy-loops in pure Python
ERRORS = "gil_errors"  # raises on magic inputs
CRASH = "gil_crash"  # dies on magic inputs
WIDE = "gil_wide"  # INPUT0 [-1]: tensors of any size (the arenas grow)
TEXT = "gil_text"  # BYTES tensors
INPROCESS = "rec_inprocess"  # a backend that releases the GIL: instance threads, no process
GIL_MODELS = {BATCHED: 2, BUSY: 2, ERRORS: 1, CRASH: 1, WIDE: 1, TEXT: 1}
WAIT_S = 30.0


@pytest.fixture(scope="module")
def markers(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("markers")


@pytest.fixture(scope="module")
def sdk(tmp_path_factory: pytest.TempPathFactory, markers: Path) -> Iterator[inferd.Server]:
    repo = tmp_path_factory.mktemp("process-instances") / "models"
    write_gil_model(repo, BATCHED, markers, instances=2, busy_ms=50, dynamic_batching=True)
    write_gil_model(repo, BUSY, markers, instances=2, busy_ms=400)
    write_gil_model(repo, ERRORS, markers)
    write_gil_model(repo, CRASH, markers)
    write_gil_model(repo, WIDE, markers, width=-1)
    write_gil_text_model(repo, TEXT)
    write_recording_model(repo, INPROCESS, instances=2, dynamic_batching=None)
    with registered(), recording_registered(), inferd.Server(model_repository=repo) as server:
        yield server


def _rows(tags: list[float], width: int = 4) -> dict[str, np.ndarray]:
    return {"INPUT0": np.array([[t] * width for t in tags], dtype=np.float32)}


def _instance_children() -> set[int]:
    """The server's (this process's) child processes that are model instances (not the resource tracker)."""
    me = os.getpid()
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == me and b"inferd.instances.worker" in cmdline:
            found.add(int(entry))
    return found


def _segments() -> set[str]:
    """This server's shared memory segments."""
    return {n for n in os.listdir("/dev/shm") if n.startswith(f"{SHM_PREFIX}{os.getpid()}-")}


def _process_instances(sdk: inferd.Server, model: str) -> list[ProcessInstance]:
    instances = sdk.model(model).scheduler.pool.instances
    assert all(isinstance(i, ProcessInstance) for i in instances), instances
    return [i for i in instances if isinstance(i, ProcessInstance)]


def _pids(sdk: inferd.Server, model: str) -> set[int]:
    pids = set()
    for instance in _process_instances(sdk, model):
        instance.wait_loaded()  # a restart still in progress finishes first
        assert instance.pid is not None
        pids.add(instance.pid)
    return pids


def _wait_for(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


async def test_results_are_correct(sdk: inferd.Server) -> None:
    response = await sdk.infer_async(ERRORS, _rows([1, 2, 3]))
    np.testing.assert_array_equal(response.outputs["OUTPUT0"], _rows([2, 4, 6])["INPUT0"])
    assert response.outputs["ROWS"].ravel().tolist() == [3, 3, 3]
    assert response.outputs["PID"].ravel()[0] != os.getpid()
    np.testing.assert_array_equal(sdk.infer(ERRORS, _rows([5])).outputs["OUTPUT0"], _rows([10])["INPUT0"])


async def test_inputs_arrive_as_views_of_shared_memory(sdk: inferd.Server) -> None:
    response = await sdk.infer_async(ERRORS, _rows([7, 8]))
    assert response.outputs["ZEROCOPY"].ravel().tolist() == [True, True]


async def test_concurrent_requests_are_batched_across_two_processes(sdk: inferd.Server) -> None:
    tags = list(range(100, 124))  # clear of the magic values
    responses = await asyncio.gather(*(sdk.infer_async(BATCHED, _rows([t])) for t in tags))
    for tag, response in zip(tags, responses, strict=True):
        np.testing.assert_array_equal(response.outputs["OUTPUT0"], _rows([2 * tag])["INPUT0"])
    batch_sizes = [int(r.outputs["ROWS"][0, 0]) for r in responses]
    assert max(batch_sizes) > 1, batch_sizes  # requests queued behind busy instances left together
    pids = {int(r.outputs["PID"][0, 0]) for r in responses}
    assert pids <= _pids(sdk, BATCHED)
    assert os.getpid() not in pids
    stats = sdk.statistics(BATCHED)["model_stats"][0]
    assert stats["inference_stats"]["success"]["count"] >= len(tags)


async def test_two_instances_run_at_once_in_two_processes(sdk: inferd.Server) -> None:
    first, second = await asyncio.gather(sdk.infer_async(BUSY, _rows([1])), sdk.infer_async(BUSY, _rows([2])))
    pid_a, pid_b = int(first.outputs["PID"][0, 0]), int(second.outputs["PID"][0, 0])
    assert pid_a != pid_b
    assert {pid_a, pid_b} == _pids(sdk, BUSY)
    assert os.getpid() not in {pid_a, pid_b}
    start_a, end_a = float(first.outputs["START"][0, 0]), float(first.outputs["END"][0, 0])
    start_b, end_b = float(second.outputs["START"][0, 0]), float(second.outputs["END"][0, 0])
    # Each busy-loops in pure Python while holding its GIL: the windows overlap only because the GILs differ.
    assert start_a < end_b and start_b < end_a, (start_a, end_a, start_b, end_b)


def test_each_model_has_only_its_own_processes(sdk: inferd.Server, markers: Path) -> None:
    by_model = {model: _pids(sdk, model) for model in GIL_MODELS}
    for model, count in GIL_MODELS.items():
        assert len(by_model[model]) == count, (model, by_model[model])
    every = [pid for pids in by_model.values() for pid in pids]
    assert len(every) == len(set(every)), by_model  # no process serves two models
    assert _instance_children() == set(every)
    # Which process loaded which model: each process loaded its own model only, and none loaded in the server.
    loaded: dict[int, set[str]] = {}
    for marker in markers.glob("load-*"):
        _, rest = marker.name.split("-", 1)
        model, pid_text = rest.rsplit("-", 1)
        loaded.setdefault(int(pid_text), set()).add(model)
    assert os.getpid() not in loaded
    for model, pids in by_model.items():
        if model != TEXT:  # the text model has no marker folder
            for pid in pids:
                assert loaded[pid] == {model}
    # A backend that releases the GIL keeps its instances on threads of the server process.
    instances = sdk.model(INPROCESS).scheduler.pool.instances
    assert len(instances) == 2 and all(isinstance(i, RecordingBackend) for i in instances)


async def test_bytes_tensors(sdk: inferd.Server) -> None:
    text = np.array([[b"hello"], [b"instance process"]], dtype=object)
    response = await sdk.infer_async(TEXT, {"TEXT": text})
    assert response.outputs["TEXT_OUT"].ravel().tolist() == [b"HELLO", b"INSTANCE PROCESS"]


@pytest.mark.parametrize("width", [3, 100_000, 1_000_000, 5, 300_000])
def test_tensors_of_any_size(sdk: inferd.Server, width: int) -> None:
    x = np.random.default_rng(width).random((2, width), dtype=np.float32)
    response = sdk.infer(WIDE, {"INPUT0": x})
    np.testing.assert_array_equal(response.outputs["OUTPUT0"], x * 2)
    assert response.outputs["ZEROCOPY"].ravel().tolist() == [True, True]


def test_shared_memory_exhaustion_fails_only_that_call(sdk: inferd.Server, monkeypatch: pytest.MonkeyPatch) -> None:
    (instance,) = _process_instances(sdk, WIDE)
    pid = _pids(sdk, WIDE)
    responses = instance._resources.responses
    grow = responses.ensure

    def ensure(size: int) -> SharedMemory:
        if size > 20_000_000:  # as if /dev/shm were full
            raise inferd.InferError(inferd.ErrorKind.RESOURCE_EXHAUSTED, "no room in /dev/shm")
        return grow(size)

    monkeypatch.setattr(responses, "ensure", ensure)
    with pytest.raises(inferd.InferError) as caught:
        sdk.infer(WIDE, {"INPUT0": np.ones((1, 8_000_000), dtype=np.float32)})  # 32 MB in, 32 MB out
    assert caught.value.kind == inferd.ErrorKind.RESOURCE_EXHAUSTED
    x = np.arange(12, dtype=np.float32).reshape(2, 6)
    np.testing.assert_array_equal(sdk.infer(WIDE, {"INPUT0": x}).outputs["OUTPUT0"], x * 2)
    assert _pids(sdk, WIDE) == pid  # the process never lost track of the conversation


async def test_backend_exception_fails_only_its_request(sdk: inferd.Server) -> None:
    before = _pids(sdk, ERRORS)
    with pytest.raises(inferd.InferError) as caught:
        await sdk.infer_async(ERRORS, _rows([-1]))
    assert caught.value.kind == inferd.ErrorKind.INTERNAL
    assert "negative input -1 is not allowed" in caught.value.message
    with pytest.raises(inferd.InferError) as caught:
        await sdk.infer_async(ERRORS, _rows([-2]))
    assert caught.value.kind == inferd.ErrorKind.INVALID_ARGUMENT  # an InferError keeps its kind
    assert "input -2 is invalid" in caught.value.message
    response = await sdk.infer_async(ERRORS, _rows([4]))
    np.testing.assert_array_equal(response.outputs["OUTPUT0"], _rows([8])["INPUT0"])
    assert _pids(sdk, ERRORS) == before  # the same process kept serving
    assert int(response.outputs["PID"][0, 0]) in before


def test_process_exit_mid_request_fails_it_and_the_instance_restarts(sdk: inferd.Server) -> None:
    old = _pids(sdk, CRASH)
    with pytest.raises(inferd.InferError) as caught:
        sdk.infer(CRASH, _rows([13]))
    assert caught.value.kind == inferd.ErrorKind.INTERNAL
    assert "model instance process exited with code 13" in caught.value.message
    response = sdk.infer(CRASH, _rows([3]))
    np.testing.assert_array_equal(response.outputs["OUTPUT0"], _rows([6])["INPUT0"])
    new = _pids(sdk, CRASH)
    assert new.isdisjoint(old)
    assert int(response.outputs["PID"][0, 0]) in new
    assert _instance_children() >= new and _instance_children().isdisjoint(old)


def test_kill_9_mid_request_fails_it_and_the_instance_restarts(sdk: inferd.Server, markers: Path) -> None:
    (pid,) = _pids(sdk, CRASH)
    outcome: list[BaseException | inferd.InferenceResponse] = []

    def call() -> None:
        try:
            outcome.append(sdk.infer(CRASH, _rows([99])))
        except BaseException as exc:
            outcome.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    _wait_for((markers / f"hang-{pid}").exists, "the request to start executing")
    os.kill(pid, signal.SIGKILL)
    caller.join(WAIT_S)
    assert not caller.is_alive()
    (error,) = outcome
    assert isinstance(error, inferd.InferError), error
    assert "model instance process exited with code -9" in error.message
    response = sdk.infer(CRASH, _rows([5]))
    np.testing.assert_array_equal(response.outputs["OUTPUT0"], _rows([10])["INPUT0"])
    assert int(response.outputs["PID"][0, 0]) != pid
    assert pid not in _instance_children()


def test_a_model_that_fails_to_load_leaves_no_process(tmp_path: Path, sdk: inferd.Server) -> None:
    repo = tmp_path / "models"
    write_gil_model(repo, "gil_broken", tmp_path, instances=2, fail_load=True)
    children, segments = _instance_children(), _segments()
    with registered(), inferd.Server(model_repository=repo, model_control_mode="explicit") as server:
        with pytest.raises(inferd.InferError) as caught:
            server.load("gil_broken")
        assert "RuntimeError: this model refuses to load" in caught.value.message
        assert not server.model_ready("gil_broken")
        assert _instance_children() == children
    assert _segments() == segments


def test_unload_and_close_leave_no_process_and_no_shared_memory(tmp_path: Path, sdk: inferd.Server) -> None:
    repo = tmp_path / "models"
    write_gil_model(repo, "gil_unload", tmp_path, instances=2, dynamic_batching=True)
    write_gil_model(repo, "gil_close", tmp_path)
    children, segments = _instance_children(), _segments()
    with registered(), inferd.Server(model_repository=repo, model_control_mode="explicit",
                                     load_models=["gil_unload", "gil_close"]) as server:
        for model in ("gil_unload", "gil_close"):
            response = server.infer(model, _rows([1, 2]))
            np.testing.assert_array_equal(response.outputs["OUTPUT0"], _rows([2, 4])["INPUT0"])
        unload_pids, close_pids = _pids(server, "gil_unload"), _pids(server, "gil_close")
        assert _instance_children() == children | unload_pids | close_pids
        assert len(_segments() - segments) >= 4  # a request and a response arena per instance used

        server.unload("gil_unload")
        assert _instance_children() == children | close_pids
        assert not server.model_ready("gil_unload")
    assert _instance_children() == children
    assert _segments() == segments
    for pid in unload_pids | close_pids:
        assert not Path(f"/proc/{pid}").exists()
