"""Model lifecycle on a fake backend: states in the repository index, failed loads, unload, reload, versions.

The manager runs as the server runs it, on a repository in a tmp folder; the models run on the test's function
backend, whose load and execute a test can hold at a gate to look at the server in the middle of a transition.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import inferd
from function_backend import GATE_TIMEOUT_S, behaviour, registered, write_model
from inferd.config import ConfigError
from inferd.manager import ModelManager
from inferd.repository import ModelRepository
from inferd.types import ErrorKind, InferError

MODEL = "adder"
CONFIG = """
max_batch_size: 4
input { name: "x" data_type: TYPE_FP32 dims: [1] }
output { name: "y" data_type: TYPE_FP32 dims: [1] }
"""
WAIT_S = 10.0


@pytest.fixture(autouse=True)
def backend() -> Iterator[None]:
    with registered(), pytest.MonkeyPatch.context() as patch:
        # Retiring a version first waits briefly for requests that looked it up a moment before; these tests
        # hold real requests at gates instead.
        patch.setattr("inferd.manager._RETIRE_GRACE_S", 0.0, raising=False)
        behaviour(MODEL).execute = lambda inputs: {"y": inputs["x"] + 1}
        yield


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return tmp_path / "models"


@pytest.fixture
def manager(repo: Path) -> Iterator[ModelManager]:
    repo.mkdir(exist_ok=True)
    manager = ModelManager(ModelRepository([repo]))
    yield manager
    manager.close()


def _rows(manager: ModelManager, name: str = MODEL) -> list[dict[str, str]]:
    return [row for row in manager.index() if row["name"] == name]


def _states(manager: ModelManager, name: str = MODEL) -> dict[str, str]:
    """Version -> state, as the repository index reports them."""
    return {row.get("version", "-"): row.get("state", "") for row in _rows(manager, name)}


def _error(call: Callable[[], Any], kind: ErrorKind, *words: str) -> InferError:
    with pytest.raises(InferError) as caught:
        call()
    assert caught.value.kind is kind, caught.value.message
    for word in words:
        assert word in caught.value.message
    return caught.value


def _in_thread(call: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = call()
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def _wait(event: threading.Event, what: str) -> None:
    assert event.wait(GATE_TIMEOUT_S), f"{what} never happened"


def _wait_until(condition: Callable[[], bool], what: str) -> None:
    """Poll an observed state (bounded): the manager retires old versions on a thread of its own."""
    done = threading.Event()
    for _ in range(int(WAIT_S / 0.01)):
        if condition():
            return
        done.wait(0.01)
    assert condition(), f"{what}: not within {WAIT_S} s"


# ---- load ----

def test_load_makes_the_model_ready(manager: ModelManager, repo: Path) -> None:
    write_model(repo, MODEL, CONFIG)
    assert _rows(manager) == [{"name": MODEL}]  # in the repository, never loaded: no state yet
    manager.load(MODEL)
    assert _rows(manager) == [{"name": MODEL, "version": "1", "state": "READY", "reason": ""}]
    served = manager.get(MODEL)
    assert (served.name, served.version) == (MODEL, 1)
    assert manager.is_ready(MODEL) and manager.is_ready(MODEL, "1")
    assert manager.all_ready()
    assert behaviour(MODEL).loads == [1]


def test_the_index_says_loading_while_a_load_is_in_progress(manager: ModelManager, repo: Path) -> None:
    write_model(repo, MODEL, CONFIG)
    gate = behaviour(MODEL).load_gate = threading.Event()
    thread, outcome = _in_thread(lambda: manager.load(MODEL))
    try:
        _wait(behaviour(MODEL).loading, "the load")
        assert _states(manager) == {"1": "LOADING"}
        assert not manager.is_ready(MODEL)
    finally:
        gate.set()
        thread.join(WAIT_S)
    assert "error" not in outcome
    assert _states(manager) == {"1": "READY"}


def test_requests_during_the_first_load_find_no_model(manager: ModelManager, repo: Path) -> None:
    write_model(repo, MODEL, CONFIG)
    gate = behaviour(MODEL).load_gate = threading.Event()
    thread, outcome = _in_thread(lambda: manager.load(MODEL))
    try:
        _wait(behaviour(MODEL).loading, "the load")
        _error(lambda: manager.get(MODEL), ErrorKind.NOT_FOUND, MODEL)
    finally:
        gate.set()
        thread.join(WAIT_S)
    assert "error" not in outcome
    assert manager.get(MODEL).version == 1


def test_a_failing_load_is_unavailable_with_its_reason(manager: ModelManager, repo: Path) -> None:
    write_model(repo, MODEL, CONFIG)
    behaviour(MODEL).load_error = ConfigError("weights file is truncated")
    error = _error(lambda: manager.load(MODEL), ErrorKind.INVALID_ARGUMENT, f"failed to load '{MODEL}'",
                   "weights file is truncated")
    assert "version 1" in error.message
    [row] = _rows(manager)
    assert (row["version"], row["state"]) == ("1", "UNAVAILABLE")
    assert "weights file is truncated" in row["reason"]
    _error(lambda: manager.get(MODEL), ErrorKind.NOT_FOUND, MODEL)
    assert not manager.all_ready()


def test_a_backend_raising_any_exception_is_unavailable_with_its_reason(manager: ModelManager, repo: Path) -> None:
    write_model(repo, MODEL, CONFIG)
    behaviour(MODEL).load_error = RuntimeError("CUDA out of memory")
    _error(lambda: manager.load(MODEL), ErrorKind.INVALID_ARGUMENT, "CUDA out of memory")
    assert _states(manager) == {"1": "UNAVAILABLE"}


def test_a_bad_config_is_unavailable_with_its_reason(manager: ModelManager, repo: Path) -> None:
    write_model(repo, MODEL, CONFIG.replace('"x" data_type: TYPE_FP32 dims: [1]', '"x" data_type: TYPE_FP32 dims: [0]'))
    _error(lambda: manager.load(MODEL), ErrorKind.INVALID_ARGUMENT, f"failed to load '{MODEL}'", "invalid dimension 0")
    [row] = _rows(manager)
    assert row["state"] == "UNAVAILABLE"
    assert "version" not in row  # the model as a whole failed: no version was tried
    assert row["reason"]
    assert behaviour(MODEL).loads == []


def test_a_model_that_is_not_in_the_repository(manager: ModelManager) -> None:
    _error(lambda: manager.load("absent"), ErrorKind.NOT_FOUND, "absent")
    _error(lambda: manager.get("absent"), ErrorKind.NOT_FOUND, "absent")
    assert _rows(manager, "absent") == []


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "a\\b"])
def test_model_names_are_one_folder_name(manager: ModelManager, name: str) -> None:
    _error(lambda: manager.load(name), ErrorKind.INVALID_ARGUMENT, "invalid model name")
    _error(lambda: manager.unload(name), ErrorKind.INVALID_ARGUMENT, "invalid model name")


def test_load_all_records_each_models_own_outcome(manager: ModelManager, repo: Path) -> None:
    write_model(repo, MODEL, CONFIG)
    write_model(repo, "broken", CONFIG)
    behaviour("broken").load_error = ConfigError("no weights")
    manager.load_all()
    assert _states(manager) == {"1": "READY"}
    assert _states(manager, "broken") == {"1": "UNAVAILABLE"}


# ---- unload ----

def test_unload(manager: ModelManager, repo: Path) -> None:
    write_model(repo, MODEL, CONFIG)
    manager.load(MODEL)
    manager.unload(MODEL)
    assert _rows(manager) == [{"name": MODEL, "state": "UNAVAILABLE", "reason": "unloaded"}]
    _error(lambda: manager.get(MODEL), ErrorKind.NOT_FOUND, MODEL)
    assert behaviour(MODEL).unloads == [1]  # the backend freed its model
    manager.load(MODEL)  # and it loads again
    assert _states(manager) == {"1": "READY"}


def test_unload_of_a_model_never_loaded(manager: ModelManager) -> None:
    _error(lambda: manager.unload("absent"), ErrorKind.NOT_FOUND, "absent", "not loaded")


def test_a_request_that_found_the_model_before_its_unload_is_refused(manager: ModelManager, repo: Path) -> None:
    write_model(repo, MODEL, CONFIG)
    manager.load(MODEL)
    served = manager.get(MODEL)  # looked up just before the unload
    manager.unload(MODEL)
    job = served.scheduler.make_job({"x": np.ones((1, 1), np.float32)}, 1, 0, 0)
    _error(lambda: served.scheduler.run_sync(job), ErrorKind.UNAVAILABLE, MODEL, "unloading")
    assert behaviour(MODEL).executed == []


# ---- unload with a request in flight (through the server's request path) ----

@pytest.fixture
def server(repo: Path) -> Iterator[inferd.Server]:
    write_model(repo, MODEL, CONFIG)
    with inferd.Server(model_repository=repo, model_control_mode="explicit", load_models=[MODEL]) as server:
        yield server


def _infer(server: inferd.Server) -> Any:
    return server.infer(MODEL, {"x": np.array([[1.0]], np.float32)}).outputs["y"]


def _hold_a_request(server: inferd.Server) -> tuple[threading.Event, threading.Thread, dict[str, Any]]:
    """A request that is executing, held there until the returned gate opens."""
    gate = behaviour(MODEL).exec_gate = threading.Event()
    thread, outcome = _in_thread(lambda: _infer(server))
    _wait(behaviour(MODEL).executing, "the request's execution")
    return gate, thread, outcome


def test_unload_waits_for_the_request_in_flight_and_refuses_new_ones(server: inferd.Server) -> None:
    gate, request, outcome = _hold_a_request(server)
    unloading, unload_outcome = _in_thread(lambda: server.unload(MODEL))
    try:
        _wait_until(lambda: not server.model_ready(MODEL), "the unload to start")
        # The model takes no new requests; the unload cannot finish while the request in flight runs.
        _error(lambda: _infer(server), ErrorKind.NOT_FOUND, MODEL)
        unloading.join(0.05)
        assert unloading.is_alive()
        assert behaviour(MODEL).unloads == []
    finally:
        gate.set()
    request.join(WAIT_S)
    unloading.join(WAIT_S)
    assert outcome["result"].tolist() == [[2.0]]  # the request in flight finished on the old version
    assert unload_outcome == {"result": None}
    assert behaviour(MODEL).unloads == [1]


def test_the_index_says_unloading_while_requests_in_flight_finish(server: inferd.Server) -> None:
    gate, request, _ = _hold_a_request(server)
    unloading, _ = _in_thread(lambda: server.unload(MODEL))
    try:
        _wait_until(lambda: not server.model_ready(MODEL), "the unload to start")
        assert [r.get("state") for r in server.repository_index() if r["name"] == MODEL] == ["UNLOADING"]
    finally:
        gate.set()
        request.join(WAIT_S)
        unloading.join(WAIT_S)
    assert [r.get("state") for r in server.repository_index() if r["name"] == MODEL] == ["UNAVAILABLE"]


# ---- reload ----

def test_reload_serves_the_old_version_until_the_new_one_is_ready(manager: ModelManager, repo: Path) -> None:
    write_model(repo, MODEL, CONFIG)
    manager.load(MODEL)
    write_model(repo, MODEL, CONFIG, versions=(2,))  # a new version appears
    gate = behaviour(MODEL).load_gate = threading.Event()
    behaviour(MODEL).loading.clear()
    thread, outcome = _in_thread(lambda: manager.load(MODEL))
    try:
        _wait(behaviour(MODEL).loading, "the reload")
        assert manager.get(MODEL).version == 1  # still serving while version 2 loads
        assert _states(manager) == {"1": "READY"}
    finally:
        gate.set()
        thread.join(WAIT_S)
    assert "error" not in outcome
    assert manager.get(MODEL).version == 2
    assert _states(manager) == {"2": "READY"}  # the default policy serves the latest version only
    _wait_until(lambda: behaviour(MODEL).unloads == [1], "version 1 to be freed")


def test_a_failed_reload_leaves_the_model_serving(manager: ModelManager, repo: Path) -> None:
    write_model(repo, MODEL, CONFIG)
    manager.load(MODEL)
    behaviour(MODEL).load_error = ConfigError("the new weights are corrupt")
    _error(lambda: manager.load(MODEL), ErrorKind.INVALID_ARGUMENT, "the new weights are corrupt")
    assert manager.get(MODEL).version == 1
    assert _states(manager) == {"1": "READY"}
    assert behaviour(MODEL).unloads == []


def test_a_reload_with_a_new_config(manager: ModelManager, repo: Path) -> None:
    write_model(repo, MODEL, CONFIG, versions=(1, 2))
    manager.load(MODEL)
    assert _states(manager) == {"2": "READY"}
    manager.load(MODEL, config=_with_policy("version_policy { all {} }"))
    assert _states(manager) == {"1": "READY", "2": "READY"}


def _with_policy(policy: str) -> Any:
    from inferd.config import parse_config

    return parse_config(f'name: "{MODEL}"\nbackend: "function"\n{CONFIG}\n{policy}')


# ---- versions ----

@pytest.mark.parametrize(("policy", "served"), [
    ("", [3]),
    ("version_policy { latest { num_versions: 2 } }", [2, 3]),
    ("version_policy { all {} }", [1, 2, 3]),
    ("version_policy { specific { versions: [1, 3, 7] } }", [1, 3]),
])
def test_version_policy(manager: ModelManager, repo: Path, policy: str, served: list[int]) -> None:
    write_model(repo, MODEL, CONFIG + policy, versions=(1, 2, 3))
    manager.load(MODEL)
    assert _states(manager) == {str(v): "READY" for v in served}
    assert sorted(behaviour(MODEL).loads) == served
    assert manager.get(MODEL).version == max(served)  # no version asked: the newest
    for version in (1, 2, 3):
        assert manager.is_ready(MODEL, str(version)) == (version in served)


def test_version_lookup_errors(manager: ModelManager, repo: Path) -> None:
    write_model(repo, MODEL, CONFIG, versions=(1, 2))
    manager.load(MODEL)
    _error(lambda: manager.get(MODEL, "1"), ErrorKind.NOT_FOUND, MODEL, "version 1")
    _error(lambda: manager.get(MODEL, "latest"), ErrorKind.INVALID_ARGUMENT, "non-negative integer")


def test_one_failing_version_leaves_the_others_ready(manager: ModelManager, repo: Path) -> None:
    write_model(repo, MODEL, CONFIG + "version_policy { all {} }", versions=(1, 2, 3))
    behaviour(MODEL).load_error, behaviour(MODEL).failing_versions = ConfigError("bad file"), (3,)
    _error(lambda: manager.load(MODEL), ErrorKind.INVALID_ARGUMENT, "version 3", "bad file")
    assert _states(manager) == {"1": "READY", "2": "READY", "3": "UNAVAILABLE"}
    assert manager.get(MODEL).version == 2  # the newest that is ready
    assert not manager.all_ready()


def test_a_model_without_versions(manager: ModelManager, repo: Path) -> None:
    write_model(repo, MODEL, CONFIG, versions=())
    manager.load(MODEL)
    assert _rows(manager) == [{"name": MODEL, "state": "UNAVAILABLE", "reason": "no versions are available"}]
    _error(lambda: manager.get(MODEL), ErrorKind.NOT_FOUND, MODEL, "no available versions")
