"""Trace settings, sampling and the trace file; the log settings' switches (no server, no sockets)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from inferd.observability import LogControl, Tracer, TraceSettings
from inferd.observability.tracing import JsonFileTraceExporter, parse_trace_config
from inferd.types import InferError


class ListExporter:
    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def export(self, record: dict[str, Any], settings: TraceSettings) -> None:
        self.records.append(record)

    def close(self) -> None:
        pass


def _tracer(**settings: Any) -> tuple[Tracer, ListExporter]:
    exporter = ListExporter()
    return Tracer(TraceSettings(**settings), exporter_factory=lambda _: exporter), exporter


def _run(tracer: Tracer, model: str, request_id: str) -> None:
    if not tracer.enabled:
        return
    trace = tracer.begin(model, 1, request_id, 100)
    if trace is not None:
        trace.computed(110, 120, 121, 150, 151, {"IN": np.zeros(2, np.float32)}, {"OUT": np.ones(2, np.float32)})
        tracer.end(trace, 200)


def _ids(exporter: ListExporter) -> list[str]:
    return [r["request_id"] for r in exporter.records]


# ---- --trace-config ----

def test_trace_config_forms() -> None:
    settings = parse_trace_config(["level=TIMESTAMPS", "triton,file=/tmp/t.json", "rate=10", "count=5",
                                   "triton,log-frequency=100", "level=TENSORS"])
    assert settings == TraceSettings(level=frozenset({"TIMESTAMPS", "TENSORS"}), rate=10, count=5,
                                     log_frequency=100, file="/tmp/t.json")
    assert parse_trace_config(["file=/tmp/t.json", "mode=triton"]).file == "/tmp/t.json"
    assert parse_trace_config([]) == TraceSettings()
    assert not parse_trace_config(["level=TIMESTAMPS", "level=OFF", "file=x"]).level
    otel = parse_trace_config(["mode=opentelemetry", "opentelemetry,url=localhost:4318/v1/traces",
                               "opentelemetry,resource=service.name=a=b", "opentelemetry,bsp_schedule_delay=10"])
    assert otel.mode == "opentelemetry" and otel.level == {"TIMESTAMPS"} and not otel.file  # no file needed
    assert otel.otel == (("url", "localhost:4318/v1/traces"), ("resource", "service.name=a=b"),
                         ("bsp_schedule_delay", "10"))


@pytest.mark.parametrize("entries, message", [
    (["level=TIMESTAMPS"], "needs a trace file"),
    (["level=LOUD", "file=x"], "unknown trace level"),
    (["rate=often"], "Unable to parse 'rate'"),
    (["count=-5"], "out of range"),
    (["mode=jaeger"], "not available"),
    (["opentelemetry,colour=blue"], "unknown opentelemetry setting"),
    (["opentelemetry,resource=service.name"], "KEY=VALUE"),
    (["colour=blue"], "unknown setting"),
    (["jaeger,file=x"], "unknown trace mode"),
    (["level"], "expect <setting>=<value>"),
])
def test_bad_trace_config(entries: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_trace_config(entries)


# ---- sampling ----

def test_tracing_off_costs_one_attribute() -> None:
    tracer, _ = _tracer(file="/tmp/t.json")
    assert tracer.enabled is False
    tracer, _ = _tracer(level=frozenset({"TIMESTAMPS"}), file="/tmp/t.json", count=0)
    assert tracer.enabled is False  # no traces left


def test_rate_and_count() -> None:
    tracer, exporter = _tracer(level=frozenset({"TIMESTAMPS"}), file="x", rate=3, count=2)
    for i in range(12):
        _run(tracer, "m", str(i))
    assert _ids(exporter) == ["2", "5"]  # every 3rd request, 2 of them
    assert tracer.settings()["trace_count"] == "0"
    record = exporter.records[0]
    assert [t["name"] for t in record["timestamps"]] == [
        "REQUEST_START", "QUEUE_START", "COMPUTE_START", "COMPUTE_INPUT_END", "COMPUTE_OUTPUT_START",
        "COMPUTE_END", "REQUEST_END"]
    assert "tensors" not in record


def test_tensors_level_records_the_model_tensors() -> None:
    tracer, exporter = _tracer(level=frozenset({"TENSORS"}), file="x", rate=1)
    _run(tracer, "m", "t")
    [record] = exporter.records
    assert [(t["activity"], t["name"], t["datatype"], t["data"]) for t in record["tensors"]] == [
        ("TENSOR_BACKEND_INPUT", "IN", "FP32", [0.0, 0.0]), ("TENSOR_BACKEND_OUTPUT", "OUT", "FP32", [1.0, 1.0])]


def test_model_settings_override_and_follow_the_global_ones() -> None:
    tracer, exporter = _tracer(file="x", rate=1)
    tracer.update({"trace_level": ["TIMESTAMPS"]}, "a")
    assert tracer.enabled
    assert tracer.settings("a")["trace_level"] == ["TIMESTAMPS"]
    assert tracer.settings("b")["trace_level"] == ["OFF"]
    _run(tracer, "a", "a1")
    _run(tracer, "b", "b1")
    assert _ids(exporter) == ["a1"]
    # A global change reaches the fields the model did not set.
    tracer.update({"trace_rate": "2"})
    assert tracer.settings("a")["trace_rate"] == "2"
    # Clearing the model's only setting: it follows the global (OFF) again.
    tracer.update({"trace_level": None}, "a")
    assert tracer.settings("a")["trace_level"] == ["OFF"] and not tracer.enabled
    # gRPC's form: lists of strings, an empty list clears.
    tracer.update({"trace_level": ["TIMESTAMPS"], "trace_rate": ["1"]}, "b")
    tracer.update({"trace_rate": []}, "b")
    assert tracer.settings("b")["trace_rate"] == "2"
    tracer.update({}, "b")  # no settings for a model: it loses all of its own
    assert tracer.settings("b")["trace_level"] == ["OFF"]


@pytest.mark.parametrize("values, message", [
    ({"trace_file": "/etc/passwd"}, "can not be updated through network protocol"),
    ({"trace_level": ["OFF", "TENSORS"]}, "only one trace level 'OFF'"),
    ({"trace_rate": ["1", "2"]}, "expect only 1 value"),
    ({"trace_rate": True}, "Unable to parse 'trace_rate'"),
    ({"log_frequency": "-1"}, "out of range"),
])
def test_bad_updates_change_nothing(values: dict[str, Any], message: str) -> None:
    tracer, _ = _tracer(file="x")
    before = tracer.settings()
    with pytest.raises(InferError, match=message):
        tracer.update(values)
    assert tracer.settings() == before


def test_tracing_needs_a_file() -> None:
    tracer, _ = _tracer()
    with pytest.raises(InferError, match="trace file name is not given"):
        tracer.update({"trace_level": ["TIMESTAMPS"]})
    with pytest.raises(ValueError):
        Tracer(TraceSettings(level=frozenset({"TIMESTAMPS"})))


def test_request_log_follows_every_request(caplog: pytest.LogCaptureFixture) -> None:
    tracer, exporter = _tracer(file="x")
    tracer.log_requests(True)
    assert tracer.enabled
    with caplog.at_level(logging.DEBUG, logger="inferd.requests"):
        _run(tracer, "m", "logged")
    assert exporter.records == []  # logged, not traced
    assert "request 'logged' to model 'm' version 1: ok" in caplog.text
    tracer.log_requests(False)
    assert not tracer.enabled


# ---- the trace file ----

def test_trace_file_is_a_json_array_after_every_write(tmp_path: Path) -> None:
    path = tmp_path / "trace.json"
    exporter = JsonFileTraceExporter(str(path))
    settings = TraceSettings(file=str(path))
    for i in range(3):
        exporter.export({"id": i}, settings)
        assert [r["id"] for r in json.loads(path.read_text())] == list(range(i + 1))
    exporter.close()


def test_log_frequency_starts_a_new_file_every_n_traces(tmp_path: Path) -> None:
    path = tmp_path / "trace.json"
    exporter = JsonFileTraceExporter(str(path))
    settings = TraceSettings(file=str(path), log_frequency=2)
    for i in range(5):
        exporter.export({"id": i}, settings)
    exporter.close()
    assert [[r["id"] for r in json.loads((tmp_path / f"trace.json.{n}").read_text())] for n in range(3)] == [
        [0, 1], [2, 3], [4]]
    assert not path.exists()


# ---- log settings ----

@pytest.fixture
def control() -> Iterator[LogControl]:
    logger = logging.getLogger("inferd")
    level = logger.level
    yield LogControl()
    logger.setLevel(level)


def _record(level: int) -> logging.LogRecord:
    return logging.LogRecord("inferd.x", level, __file__, 1, "message", None, None)


def test_log_switches_are_independent(control: LogControl) -> None:
    control.update({"log_info": False})
    assert [control._wanted(_record(level)) for level in (logging.DEBUG, logging.INFO, logging.WARNING,
                                                           logging.ERROR)] == [False, False, True, True]
    assert logging.getLogger("inferd").level == logging.WARNING
    control.update({"log_info": True, "log_warning": False})
    assert [control._wanted(_record(level)) for level in (logging.INFO, logging.WARNING, logging.ERROR)] == [
        True, False, True]
    control.update({"log_verbose_level": 1})
    assert control._wanted(_record(logging.DEBUG)) and logging.getLogger("inferd").level == logging.DEBUG
    assert control.settings() == {"log_file": "", "log_info": True, "log_warning": False, "log_error": True,
                                  "log_verbose_level": 1, "log_format": "default"}


@pytest.mark.parametrize("values, message", [
    ({"log_file": "/tmp/x.log"}, "can not be updated through network protocol"),
    ({"log_error": 1}, "expect boolean"),
    ({"log_verbose_level": True}, "unsigned integer"),
    ({"log_format": "yaml"}, "invalid argument for log_format"),
    ({"log_format": "json"}, "chosen where the server starts"),
    ({"log_verbose_level": 1, "verbose": 1}, "unknown log setting 'verbose'"),
])
def test_bad_log_settings_change_nothing(control: LogControl, values: dict[str, Any], message: str) -> None:
    with pytest.raises(InferError, match=message):
        control.update(values)
    assert control.settings()["log_verbose_level"] == 0


def test_serve_flags() -> None:
    from inferd.cli import build_parser

    args = build_parser().parse_args(["serve", "--model-repository", "/m", "--trace-config", "level=TIMESTAMPS",
                                      "--trace-config", "triton,file=/tmp/t.json", "--log-file", "/tmp/l.log",
                                      "--log-format", "ISO8601"])
    assert parse_trace_config(args.trace_config).file == "/tmp/t.json"
    assert (args.log_file, args.log_format, args.log_verbose) == ("/tmp/l.log", "ISO8601", 0)


def test_a_step_of_a_traced_graph_is_traced_as_its_child() -> None:
    """While a sampled request runs, the requests it makes (a graph's steps) are traced with it, whatever the rate,
    and their records name it as `parent_id`; once it ended, requests are sampled by the rate again."""
    tracer, exporter = _tracer(file="x", level=frozenset({"TIMESTAMPS"}), rate=2)
    _run(tracer, "graph", "g-0")  # the 1st request: not sampled at rate 2
    outer = tracer.begin("graph", 1, "g-1", 100)  # the 2nd: sampled
    assert outer is not None
    _run(tracer, "step", "s-1")  # runs inside it: traced, though the rate would skip it
    tracer.end(outer, 300)
    _run(tracer, "step", "s-2")  # on its own again: the 3rd request at rate 2, not sampled
    records = {r["request_id"]: r for r in exporter.records}
    assert set(records) == {"g-1", "s-1"}
    assert records["s-1"]["parent_id"] == records["g-1"]["id"] and "parent_id" not in records["g-1"]
