"""The instance autoscaler on a real `inferd serve` (issue 14): under a bounded load from `hey` on a slow Python
model, its instances rise from instance_group.count to autoscale_max_instances, and after the load they fall back to
autoscale_min_instances — seen in the metrics (`inferd_model_instances`) and the config answer, with short windows
set for the test."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from observing import metric, scrape
from scaling_models import add_slow_python, slow_body
from serving import ServerProcess, start_server

MODEL = "slow_autoscaled"
CONFIG = """
instance_group [ { count: 1 kind: KIND_CPU } ]
parameters { key: "autoscale_min_instances" value { string_value: "1" } }
parameters { key: "autoscale_max_instances" value { string_value: "3" } }
parameters { key: "autoscale_target_pending" value { string_value: "1" } }
parameters { key: "autoscale_window_seconds" value { string_value: "0.5" } }
"""
HEY = shutil.which("hey")


def _instances(server: ServerProcess) -> int:
    return int(metric(scrape(server.metrics_port), "inferd_model_instances", model=MODEL, version="1"))


def _configured(server: ServerProcess) -> int:
    config = httpx.get(f"{server.base_url}/v2/models/{MODEL}/config", timeout=10).json()
    return sum(int(group["count"]) for group in config["instance_group"])


def _wait_instances(server: ServerProcess, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while _instances(server) != count:
        assert time.monotonic() < deadline, f"never {count} instances:\n{server.log()}"
        time.sleep(0.1)


@pytest.mark.skipif(HEY is None, reason="hey is not installed")
def test_instances_follow_the_load(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    add_slow_python(repo, MODEL, load_s=0.0, predict_s=0.1, config=CONFIG)
    server = start_server(repo, tmp_path / "server.log")
    try:
        assert _instances(server) == 1 and _configured(server) == 1
        body = tmp_path / "body.json"
        body.write_text(json.dumps(slow_body()))
        seen: list[tuple[int, int]] = []
        stop = threading.Event()

        def observe() -> None:
            while not stop.is_set():
                seen.append((_instances(server), _configured(server)))
                time.sleep(0.1)

        observer = threading.Thread(target=observe, daemon=True)
        observer.start()
        try:
            load = subprocess.run([str(HEY), "-z", "8s", "-c", "12", "-t", "30", "-m", "POST", "-T",
                                   "application/json", "-D", str(body),
                                   f"{server.base_url}/v2/models/{MODEL}/infer"],
                                  capture_output=True, text=True, timeout=60, check=True)
        finally:
            stop.set()
            observer.join(timeout=10)
        assert "[200]" in load.stdout and "Error distribution" not in load.stdout, load.stdout
        assert max(count for count, _ in seen) == 3  # up to the max, never past it
        assert (3, 3) in seen  # the config answer shows the count too
        _wait_instances(server, 1, timeout=20)  # idle: back to the min
        assert _configured(server) == 1
        stats = httpx.get(f"{server.base_url}/v2/models/{MODEL}/stats", timeout=10).json()["model_stats"][0]
        assert stats["inference_count"] > 50  # every request of the load ran
        answer = httpx.post(f"{server.base_url}/v2/models/{MODEL}/infer", json=slow_body(2.0), timeout=10)
        assert answer.json()["outputs"][0]["data"] == [4.0]
    finally:
        server.stop()
