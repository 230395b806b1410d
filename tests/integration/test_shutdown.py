"""Shutdown of a real `inferd serve` (issue 17, finding 7): SIGTERM with a hung Python model in flight exits within
`--exit-timeout-secs`, taking its instance process with it; instance processes die with a SIGKILLed server; readiness
turns false before the listeners close, while requests in flight still finish."""

from __future__ import annotations

import os
import signal
import textwrap
import threading
import time
from pathlib import Path

import httpx
import pytest

from serving import ServerProcess

MODEL = "py_stall"  # x = 0: answers; x = 1: blocks forever on a lock; x = 2: answers after 3 s
STALL_PY = """
    import os
    import threading
    import time
    from pathlib import Path

    import numpy as np

    HERE = Path(__file__).parent
    LOCK = threading.Lock()


    class Model:
        inputs = [{"name": "x", "datatype": "INT32", "shape": [1]}]
        outputs = [{"name": "pid", "datatype": "INT64", "shape": [1]}]

        def predict(self, inputs):
            action = int(inputs["x"][0])
            if action == 1:  # hung for good, having said who we are
                (HERE / "busy.pid").write_text(str(os.getpid()))
                LOCK.acquire()
                LOCK.acquire()
            elif action == 2:  # slow
                (HERE / "slow.pid").write_text(str(os.getpid()))
                time.sleep(3)
            return {"pid": np.array([os.getpid()])}
"""
MARGIN_S = 4.0  # over the exit timeout: the interpreter's own exit, terminating the instance process


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie counts as gone: the process has ended, its parent has yet to reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return not _alive(pid)


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(child) for child in (task / "children").read_text().split()]
    return found


def _infer(server: ServerProcess, x: int, timeout: float = 30.0) -> httpx.Response:
    body = {"inputs": [{"name": "x", "shape": [1], "datatype": "INT32", "data": [x]}]}
    return httpx.post(f"{server.base_url}/v2/models/{MODEL}/infer", json=body, timeout=timeout)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    version = tmp_path / "models" / MODEL / "1"
    version.mkdir(parents=True)
    (version / "model.py").write_text(textwrap.dedent(STALL_PY))
    return tmp_path / "models"


def _start(repo: Path, tmp_path: Path, *extra: str, env: dict[str, str] | None = None) -> ServerProcess:
    server = ServerProcess(repo, tmp_path / "server.log", *extra, env=env)
    server.wait_live()
    deadline = time.monotonic() + 60
    while httpx.get(f"{server.base_url}/v2/models/{MODEL}/ready").status_code != 200:
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.1)
    return server


def _in_flight(server: ServerProcess, marker: Path, x: int) -> tuple[int, threading.Thread, list[object]]:
    """Send a request with `x` from a thread; once the model has it, its instance process's id."""
    answer: list[object] = []

    def call() -> None:
        try:
            answer.append(_infer(server, x))
        except httpx.HTTPError as exc:
            answer.append(exc)

    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    deadline = time.monotonic() + 30
    while not (marker.exists() and marker.read_text()):
        assert time.monotonic() < deadline, f"the model never started the request:\n{server.log()}"
        time.sleep(0.02)
    return int(marker.read_text()), caller, answer


def test_sigterm_with_a_hung_model_exits_within_the_exit_timeout(repo: Path, tmp_path: Path) -> None:
    server = _start(repo, tmp_path, "--exit-timeout-secs", "2")
    try:
        child, _, _ = _in_flight(server, repo / MODEL / "1" / "busy.pid", 1)
        assert _alive(child)
        started = time.monotonic()
        server.terminate()
        code = server.wait_exit(timeout=2 + MARGIN_S + 10)
        took = time.monotonic() - started
        assert took < 2 + MARGIN_S, f"exit took {took:.1f} s:\n{server.log()}"
        assert code == 0, server.log()
        assert _wait_gone(child, 2), "the hung instance process outlived the server"
    finally:
        server.stop()


def test_instance_processes_die_with_a_killed_server(repo: Path, tmp_path: Path) -> None:
    server = _start(repo, tmp_path)
    try:
        child, _, _ = _in_flight(server, repo / MODEL / "1" / "busy.pid", 1)  # busy in the model: not reading
        others = [pid for pid in _children(server.process.pid) if pid != child]  # multiprocessing's resource tracker
        assert others, "the server started no resource tracker"
        os.kill(server.process.pid, signal.SIGKILL)
        server.process.wait(10)
        assert _wait_gone(child, 5), "the instance process outlived its killed server"
        for pid in others:
            assert _wait_gone(pid, 5), f"process {pid} of the server outlived it"
    finally:
        server.stop()


def test_idle_instance_process_dies_with_a_killed_server(repo: Path, tmp_path: Path) -> None:
    server = _start(repo, tmp_path)
    try:
        child = int(_infer(server, 0).json()["outputs"][0]["data"][0])
        os.kill(server.process.pid, signal.SIGKILL)
        server.process.wait(10)
        assert _wait_gone(child, 5), "the instance process outlived its killed server"
    finally:
        server.stop()


def test_not_ready_during_the_drain_and_the_request_in_flight_finishes(repo: Path, tmp_path: Path) -> None:
    import tritonclient.grpc as grpcclient

    # A drain delay: the front doors keep accepting for 1 s after SIGTERM, answering not ready.
    server = _start(repo, tmp_path, "--exit-timeout-secs", "10", "--drain-delay-secs", "1")
    try:
        assert httpx.get(f"{server.base_url}/v2/health/ready").status_code == 200
        grpc = grpcclient.InferenceServerClient(server.grpc_url)
        assert grpc.is_server_ready()
        _, caller, answer = _in_flight(server, repo / MODEL / "1" / "slow.pid", 2)
        server.terminate()
        deadline = time.monotonic() + 2
        status = None
        while caller.is_alive() and time.monotonic() < deadline:
            try:
                status = httpx.get(f"{server.base_url}/v2/health/ready", timeout=1).status_code
            except httpx.HTTPError:
                status = None  # listener closed
            if status == 400:
                break
            time.sleep(0.02)
        assert status == 400, f"readiness did not turn false while the request ran (last: {status}):\n{server.log()}"
        assert not grpc.is_server_ready()
        assert httpx.get(f"{server.base_url}/v2/health/live").status_code == 200  # live while draining
        assert caller.is_alive(), "the slow request ended before readiness was checked"
        caller.join(30)
        assert answer and isinstance(answer[0], httpx.Response), answer
        assert answer[0].status_code == 200, answer[0].text
        assert server.wait_exit(30) == 0, server.log()
    finally:
        server.stop()
