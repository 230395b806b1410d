"""Seldon custom metrics exported on `inferd microservice`'s Prometheus port, as Seldon's Python wrapper exports
them: a COUNTER's increments summed (`<key>_total`), a GAUGE's last value, a TIMER's milliseconds observed into a
histogram in seconds; tags become labels next to model_name, method and worker_id. A bad metric dict is dropped
(logged once) and never fails the call. Values are sums of small binary-exact numbers, compared with a 1e-9
tolerance (the text format prints floats in full)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
from prometheus_client.parser import text_string_to_metric_families

from serving import Microservice

METERED = '''
class Metered:
    def __init__(self):
        self.calls = 0
    def predict(self, X, features_names):
        self.calls += 1
        return [[float(sum(row))] for row in X]
    def metrics(self):
        n = self.calls
        return [{"type": "COUNTER", "key": "rows_seen", "value": 1.5 * n, "tags": {"kind": "rows"}},
                {"type": "GAUGE", "key": "last_call", "value": n, "tags": {"kind": "calls"}},
                {"type": "TIMER", "key": "work_ms", "value": 2.0 * n, "tags": {"kind": "time"}},
                {"type": "HISTOGRAM", "key": "bad_type", "value": 1},
                {"type": "GAUGE", "key": "bad_value", "value": "high"}]
'''
N = 4


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Microservice]:
    folder = tmp_path_factory.mktemp("seldon_metered")
    (folder / "metered.py").write_text(METERED)
    started = Microservice(folder, folder / "service.log", "metered:Metered")
    try:
        started.wait_live()
        yield started
    finally:
        started.stop()


def _scrape(service: Microservice) -> list[tuple[str, dict[str, str], float]]:
    reply = httpx.get(f"http://127.0.0.1:{service.metrics_port}/metrics", timeout=10)
    assert reply.status_code == 200
    return [(s.name, dict(s.labels), s.value) for family in text_string_to_metric_families(reply.text)
            for s in family.samples]


def _value(samples: list[tuple[str, dict[str, str], float]], name: str, **labels: str) -> float:
    found = [v for n, got, v in samples if n == name and all(got.get(k) == w for k, w in labels.items())]
    assert len(found) == 1, (name, labels, [s for s in samples if s[0] == name])
    return found[0]


def test_counter_gauge_and_timer_are_exported(service: Microservice) -> None:
    for _ in range(N):
        reply = service.post("/api/v1.0/predictions", {"data": {"ndarray": [[1.0, 2.0]]}})
        assert reply.status_code == 200, reply.text  # the two bad metric dicts do not fail the call
        assert [m["key"] for m in reply.json()["meta"]["metrics"]] == ["rows_seen", "last_call", "work_ms"]
    samples = _scrape(service)
    own = {"model_name": "metered", "method": "predict", "worker_id": str(service.process.pid)}
    assert _value(samples, "rows_seen_total", kind="rows", **own) == pytest.approx(1.5 * sum(range(1, N + 1)),
                                                                                   abs=1e-9)
    assert _value(samples, "last_call", kind="calls", **own) == N
    assert _value(samples, "work_ms_count", kind="time", **own) == N
    assert _value(samples, "work_ms_sum", kind="time", **own) == pytest.approx(2.0 * sum(range(1, N + 1)) / 1000,
                                                                               abs=1e-9)  # seconds, as Seldon's
    # 2, 4, 6, 8 ms: two are at most 5.38 ms (a bucket bound of Seldon's), all four within 8.2 ms and +Inf.
    assert _value(samples, "work_ms_bucket", le="0.005382184388525994") == 2
    assert _value(samples, "work_ms_bucket", le="0.008197816923039709") == N
    assert _value(samples, "work_ms_bucket", le="+Inf") == N
    names = {n for n, _, _ in samples}
    assert not any(n.startswith(("bad_type", "bad_value")) for n in names)
    assert any(n.startswith("nv_inference_request_success") for n in names)  # inferd's own metrics stay there
    log = service.log_path.read_text()
    assert log.count("'bad_type' has unknown type 'HISTOGRAM'") == 1, log  # logged once, not per call
    assert log.count("'bad_value' has value 'high'") == 1, log


def test_v2_calls_and_feedback_are_counted_too(service: Microservice) -> None:
    before = _scrape(service)
    calls = _value(before, "last_call", method="predict")
    inp = httpclient.InferInput("input", [1, 2], "FP64")
    inp.set_data_from_numpy(np.array([[3.0, 4.0]]))
    result = httpclient.InferenceServerClient(service.http_url).infer("metered", [inp])
    np.testing.assert_array_equal(result.as_numpy("output"), [[7.0]])
    reply = service.post("/api/v1.0/feedback", {"request": {"data": {"ndarray": [[1.0]]}}, "reward": 0.5})
    assert reply.status_code == 200, reply.text
    after = _scrape(service)
    assert _value(after, "last_call", method="predict") == calls + 1
    assert _value(after, "rows_seen_total", method="predict") == pytest.approx(
        _value(before, "rows_seen_total", method="predict") + 1.5 * (calls + 1), abs=1e-9)
    assert _value(after, "work_ms_count", method="predict") == _value(before, "work_ms_count", method="predict") + 1
    assert _value(after, "seldon_api_model_feedback_total", method="send_feedback") == 1  # as Seldon's wrapper
    assert _value(after, "seldon_api_model_feedback_reward_total", method="send_feedback") == 0.5
