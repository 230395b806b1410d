"""Fair share between tenants through a real `inferd serve` with an auth file: one tenant's burst of requests to a
model does not make another tenant's requests to the same model wait behind it.

The model sleeps 10 ms per request on one instance without batching, so a burst of 200 keeps it busy for seconds.
Without the fair-share stage the other tenant's requests would queue behind whatever part of the burst had arrived;
with it they are scheduled in turn, so each takes about two of the model's executions. The bound is a ratio of the
burst's own duration, not a number of milliseconds, so a slow machine slows both sides alike.
"""

from __future__ import annotations

import asyncio
import json
import textwrap
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from serving import ServerProcess, start_server

MODEL = "sleepy"
ACME_KEY = "acme-fairness-key-0123456789"
BETA_KEY = "beta-fairness-key-9876543210"
BURST = 200
BETA_REQUESTS = 5
SHARE = 0.25  # each of beta's requests takes less than this fraction of the burst's duration
WAIT_S = 60.0

SLEEPY_PY = """
    import time

    import numpy as np


    class Sleepy:
        def predict(self, inputs):
            time.sleep(0.01)
            return {"y": np.asarray(inputs["x"], dtype=np.float32)}
"""

SLEEPY_CONFIG = """
    name: "sleepy"
    backend: "python"
    max_batch_size: 0
    input [ { name: "x" data_type: TYPE_FP32 dims: [ 1 ] } ]
    output [ { name: "y" data_type: TYPE_FP32 dims: [ 1 ] } ]
    instance_group [ { count: 1 kind: KIND_CPU } ]
"""

PAYLOAD = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1.0]}]}


def _headers(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("fairness")
    version = root / "models" / MODEL / "1"
    version.mkdir(parents=True)
    (version / "model.py").write_text(textwrap.dedent(SLEEPY_PY))
    (root / "models" / MODEL / "config.pbtxt").write_text(textwrap.dedent(SLEEPY_CONFIG))
    auth = root / "auth.json"
    auth.write_text(json.dumps({"tenants": [
        {"name": "acme", "keys": [ACME_KEY], "models": ["*"]},
        {"name": "beta", "keys": [BETA_KEY], "models": ["*"]},
    ]}))
    process = start_server(root / "models", root / "inferd.log", "--auth-config", str(auth),
                           "--state-dir", str(root / "state"))
    deadline = time.monotonic() + WAIT_S
    while httpx.get(f"{process.base_url}/v2/models/{MODEL}/ready", headers=_headers(ACME_KEY),
                    timeout=30).status_code != 200:
        assert time.monotonic() < deadline, process.log()
        time.sleep(0.1)
    yield process
    process.stop()


class Burst:
    """acme's burst, sent from a thread of its own (its own event loop), so beta's timings are the server's, not
    this process's loop busy with 200 responses."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.statuses: list[int] = []
        self.started = 0.0
        self.ended = 0.0
        self.under_way = threading.Event()  # some of the burst is answered: the rest waits at the server
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), name="acme-burst")

    async def _run(self) -> None:
        limits = httpx.Limits(max_connections=BURST + 10, max_keepalive_connections=BURST + 10)
        async with httpx.AsyncClient(base_url=self.base_url, limits=limits, timeout=120) as client:

            async def one() -> None:
                response = await client.post(f"/v2/models/{MODEL}/infer", json=PAYLOAD, headers=_headers(ACME_KEY))
                self.statuses.append(response.status_code)
                if len(self.statuses) >= 10:
                    self.under_way.set()

            self.started = time.monotonic()
            try:
                await asyncio.gather(*(one() for _ in range(BURST)))
            finally:
                self.ended = time.monotonic()
                self.under_way.set()


def test_another_tenants_requests_do_not_wait_behind_a_burst(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.base_url, timeout=120) as beta:
        assert beta.post(f"/v2/models/{MODEL}/infer", json=PAYLOAD, headers=_headers(BETA_KEY)).status_code == 200
        burst = Burst(server.base_url)
        burst.thread.start()
        try:
            assert burst.under_way.wait(WAIT_S), "the burst got no answers"
            durations = []
            for _ in range(BETA_REQUESTS):
                begun = time.monotonic()
                response = beta.post(f"/v2/models/{MODEL}/infer", json=PAYLOAD, headers=_headers(BETA_KEY))
                durations.append(time.monotonic() - begun)
                assert response.status_code == 200, response.text
            beta_done = time.monotonic()
        finally:
            burst.thread.join(WAIT_S * 2)
    assert burst.statuses == [200] * BURST, sorted(set(burst.statuses))
    burst_s = burst.ended - burst.started
    assert beta_done < burst.ended, "beta's requests should have run during the burst"
    worst = max(durations)
    assert worst < SHARE * burst_s, (f"beta's slowest request took {worst:.3f} s, {worst / burst_s:.0%} of the "
                                     f"burst's {burst_s:.3f} s (durations: {[round(d, 3) for d in durations]})")
