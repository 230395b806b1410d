"""A graceful rollout (issue 14): SIGTERM to a real `inferd serve` under `hey` load. Readiness turns false first
(while connections are still accepted: the drain delay), then new connections are refused, every request the server
accepted gets its answer (in flight and queued ones finish), and the process exits 0 within --exit-timeout-secs."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from scaling_models import add_slow_python, slow_body
from serving import ServerProcess, start_server

MODEL = "slow_rollout"
EXIT_TIMEOUT_S = 10.0
MARGIN_S = 4.0  # the interpreter's own exit
HEY = shutil.which("hey")


class _Readiness:
    """Polls /v2/health/ready on fresh connections; keeps (time, status) with status None for a refused
    connection."""

    def __init__(self, server: ServerProcess) -> None:
        self.seen: list[tuple[float, int | None]] = []
        self._url = f"{server.base_url}/v2/health/ready"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                status: int | None = httpx.get(self._url, timeout=5).status_code
            except httpx.ConnectError:
                status = None
            self.seen.append((time.monotonic(), status))
            time.sleep(0.02)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def first(self, status: int | None) -> float | None:
        return next((t for t, s in self.seen if s == status), None)


@pytest.mark.skipif(HEY is None, reason="hey is not installed")
def test_sigterm_under_load_answers_every_accepted_request(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    add_slow_python(repo, MODEL, load_s=0.0, predict_s=0.2, config="instance_group [ { count: 2 kind: KIND_CPU } ]")
    server = start_server(repo, tmp_path / "server.log", "--exit-timeout-secs", str(EXIT_TIMEOUT_S),
                          "--drain-delay-secs", "1")
    body = tmp_path / "body.json"
    body.write_text(json.dumps(slow_body()))
    try:
        readiness = _Readiness(server)
        # Fresh connections for every request: a refused connection is a request the server never accepted.
        load = subprocess.Popen([str(HEY), "-z", "6s", "-c", "8", "-t", "30", "-disable-keepalive", "-m", "POST",
                                 "-T", "application/json", "-D", str(body),
                                 f"{server.base_url}/v2/models/{MODEL}/infer"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(2.0)
        signalled = time.monotonic()
        server.terminate()
        code = server.wait_exit(EXIT_TIMEOUT_S + MARGIN_S)
        exited = time.monotonic()
        output, _ = load.communicate(timeout=60)
        readiness.stop()
    finally:
        server.stop()
    assert code == 0, server.log()
    assert exited - signalled < EXIT_TIMEOUT_S + MARGIN_S
    statuses = dict(re.findall(r"\[(\d{3})\]\s+(\d+) responses", output))
    assert list(statuses) == ["200"] and int(statuses["200"]) > 10, output
    errors = output.split("Error distribution:", 1)[1] if "Error distribution:" in output else ""
    unexpected = [line for line in errors.strip().splitlines() if "connection refused" not in line]
    assert unexpected == [], output  # no reset, no EOF: nothing accepted was dropped
    not_ready, refused = readiness.first(400), readiness.first(None)
    assert not_ready is not None and not_ready >= signalled - 0.1, readiness.seen[-20:]
    assert refused is None or refused > not_ready  # readiness false first, refusals after
