"""Triton's trace extension: sampled requests leave a record of when they reached each stage.

The settings follow Triton's (global, and per model): `trace_level` (OFF, or TIMESTAMPS and/or TENSORS),
`trace_rate` (trace every N-th request), `trace_count` (how many traces are left, -1 for no limit),
`log_frequency` (start a new file `<trace_file>.<n>` every N traces; 0 keeps one file) and `trace_file`.
A sampled request carries a `Trace`; the core marks REQUEST_START, QUEUE_START, COMPUTE_START, COMPUTE_INPUT_END,
COMPUTE_OUTPUT_START, COMPUTE_END and REQUEST_END on it (steady-clock nanoseconds, as Triton) and the tracer
hands the finished record to a `TraceExporter`. `JsonFileTraceExporter` writes Triton's trace file; in mode
`opentelemetry` each sampled request is an OpenTelemetry span instead (otel.py, loaded only in that mode).

While a sampled request runs, its `Trace` is the current one (a contextvar): a graph's calls of its steps run
inside the graph request's task, so their traces become its children, and a remote node's call passes the
request's W3C `traceparent` on (`outgoing_headers`).

When nothing is traced `Tracer.enabled` is False, and that one attribute is all a request pays for.
The same hook feeds the verbose request log: with `log_requests` on, every request ends with a debug line.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import itertools
import logging
import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import orjson

from ..types import ErrorKind, InferError, datatype_of

if TYPE_CHECKING:
    from .otel import OtelTracing

log = logging.getLogger("inferd.trace")
request_log = logging.getLogger("inferd.requests")

LEVELS = ("TIMESTAMPS", "TENSORS")  # in the order Triton lists them
MODES = ("triton", "opentelemetry")
_UINT32_MAX = 2**32 - 1
_INT32_MAX = 2**31 - 1

SettingsJson = dict[str, "str | list[str]"]


@dataclasses.dataclass(frozen=True, slots=True)
class TraceSettings:
    """One set of trace settings; Triton's defaults (tracing off, every 1000th request once on)."""

    level: frozenset[str] = frozenset()  # empty: OFF
    rate: int = 1000
    count: int = -1
    log_frequency: int = 0
    file: str = ""
    mode: str = "triton"
    # Mode opentelemetry's own settings (`--trace-config opentelemetry,KEY=VALUE`: url, resource, bsp_*, exporter,
    # protocol, file), in the order given; not part of the trace API's settings, as in Triton.
    otel: tuple[tuple[str, str], ...] = ()

    @property
    def active(self) -> bool:
        if self.mode == "opentelemetry":  # rate 0: only the requests that arrive with a sampled traceparent
            return bool(self.level) and self.count != 0
        return bool(self.level) and self.count != 0 and self.rate > 0 and bool(self.file)

    def check(self) -> None:
        if self.level and not self.file and self.mode != "opentelemetry":
            raise InferError.invalid("trace file name is not given: start the server with "
                                     "--trace-config triton,file=PATH to trace")

    def to_json(self, count: int | None = None) -> SettingsJson:
        """Triton's form: strings, and a list of strings for the level."""
        levels = [name for name in LEVELS if name in self.level] or ["OFF"]
        return {
            "trace_level": levels,
            "trace_rate": str(self.rate),
            "trace_count": str(self.count if count is None else count),
            "log_frequency": str(self.log_frequency),
            "trace_file": self.file,
            "trace_mode": self.mode,
        }


# ---- reading settings: the API's values and `--trace-config` ----

_FIELDS = {"trace_level": "level", "trace_rate": "rate", "trace_count": "count", "log_frequency": "log_frequency",
           "trace_file": "file"}
_CLEAR = object()


def _single(name: str, value: Any) -> Any:
    """gRPC sends every value as a list of strings: one item for a single value, none to clear it."""
    if isinstance(value, list):
        if not value:
            return None
        if len(value) > 1:
            raise InferError.invalid(f"expect only 1 value for '{name}'")
        return value[0]
    return value


def _integer(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise InferError.invalid(f"Unable to parse '{name}': expect an integer as a string, got {value!r}")
    try:
        number = int(value)
    except ValueError:
        raise InferError.invalid(f"Unable to parse '{name}', got: {value}") from None
    if not low <= number <= high:
        raise InferError.invalid(f"Unable to parse '{name}', value is out of range [ {low}, {high} ], got: {value}")
    return number


def _levels(value: Any) -> frozenset[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
        raise InferError.invalid(f"'trace_level' must be a list of strings, got {value!r}")
    names = [v.upper() for v in items]
    if "OFF" in names:
        if len(names) > 1:
            raise InferError.invalid("Expect only one trace level 'OFF' is specified")
        return frozenset()
    unknown = [v for v in names if v not in LEVELS]
    if unknown:
        raise InferError.invalid(f"unknown trace level '{unknown[0]}': expect OFF, TIMESTAMPS or TENSORS")
    return frozenset(names)


def parse_updates(values: Mapping[str, Any], *, allow_file: bool = False) -> dict[str, Any]:
    """API values (HTTP JSON or gRPC string lists) as TraceSettings fields; `_CLEAR` where a value is null/empty.

    Names Triton does not define are ignored, as Triton does. The trace file can only be chosen where the server
    starts (as in Triton since 24.05): a network request must not make the server write anywhere it likes.
    """
    changes: dict[str, Any] = {}
    for name, raw in values.items():
        attr = _FIELDS.get(name)
        if attr is None:
            continue
        if name == "trace_file" and not allow_file:
            raise InferError(ErrorKind.UNSUPPORTED, "trace file location can not be updated through network protocol")
        if name == "trace_level":
            if raw is None or raw == []:
                changes[attr] = _CLEAR
            else:
                changes[attr] = _levels(raw)
            continue
        value = _single(name, raw)
        if value is None:
            changes[attr] = _CLEAR
        elif name == "trace_file":
            if not isinstance(value, str):
                raise InferError.invalid("'trace_file' must be a string")
            changes[attr] = value
        elif name == "trace_count":
            changes[attr] = _integer(name, value, -1, _INT32_MAX)
        else:
            changes[attr] = _integer(name, value, 0, _UINT32_MAX)
    return changes


OTEL_SETTINGS = ("url", "resource", "bsp_max_queue_size", "bsp_schedule_delay", "bsp_max_export_batch_size",
                 "exporter", "protocol", "file")


def parse_trace_config(entries: Sequence[str], base: TraceSettings | None = None) -> TraceSettings:
    """Triton's `--trace-config` values: `level=TIMESTAMPS`, `rate=N`, `count=N`, `mode=triton|opentelemetry`, the
    Triton mode's `file=PATH` and `log-frequency=N` (with or without the `triton,` prefix), and the OpenTelemetry
    mode's `opentelemetry,url=HOST:PORT/v1/traces`, `opentelemetry,resource=KEY=VALUE` (repeatable),
    `opentelemetry,bsp_max_queue_size|bsp_schedule_delay|bsp_max_export_batch_size=N`, and this server's
    `opentelemetry,exporter=otlp|console|file`, `opentelemetry,protocol=http/protobuf|grpc` and
    `opentelemetry,file=PATH` (the file exporter's JSON lines). Mode opentelemetry without a level traces at
    TIMESTAMPS. Raises ValueError."""
    settings = base or TraceSettings()
    levels: set[str] = set()
    level_given = False
    otel: list[tuple[str, str]] = list(settings.otel)
    for entry in entries:
        mode, _, setting = entry.partition(",") if "," in entry.split("=", 1)[0] else ("", "", entry)
        if mode and mode not in ("triton", "opentelemetry"):
            raise ValueError(f"--trace-config {entry}: unknown trace mode '{mode}'")
        key, sep, value = setting.partition("=")
        key = key.strip().replace("_", "-")
        if not sep:
            raise ValueError(f"--trace-config {entry}: expect <setting>=<value>")
        if mode == "opentelemetry":
            otel.append(_otel_setting(entry, setting.partition("=")[0].strip(), value))
            continue
        try:
            if key == "level":
                level_given = True
                found = _levels(value)
                levels = set() if not found else levels | found
            elif key == "rate":
                settings = dataclasses.replace(settings, rate=_integer("rate", value, 0, _UINT32_MAX))
            elif key == "count":
                settings = dataclasses.replace(settings, count=_integer("count", value, -1, _INT32_MAX))
            elif key == "log-frequency":
                settings = dataclasses.replace(settings, log_frequency=_integer(key, value, 0, _UINT32_MAX))
            elif key == "file":
                settings = dataclasses.replace(settings, file=value)
            elif key == "mode":
                if value not in MODES:
                    raise ValueError(f"--trace-config {entry}: trace mode '{value}' is not available "
                                     "(expect triton or opentelemetry)")
                settings = dataclasses.replace(settings, mode=value)
            else:
                raise ValueError(f"--trace-config {entry}: unknown setting '{key}'")
        except InferError as exc:
            raise ValueError(f"--trace-config {entry}: {exc.message}") from None
    if level_given:
        settings = dataclasses.replace(settings, level=frozenset(levels))
    elif settings.mode == "opentelemetry" and not settings.level:
        settings = dataclasses.replace(settings, level=frozenset({"TIMESTAMPS"}))
    settings = dataclasses.replace(settings, otel=tuple(otel))
    if settings.level and not settings.file and settings.mode == "triton":
        raise ValueError("--trace-config level=... needs a trace file: add --trace-config triton,file=PATH "
                         "(or trace with --trace-config mode=opentelemetry)")
    return settings


def _otel_setting(entry: str, key: str, value: str) -> tuple[str, str]:
    if key not in OTEL_SETTINGS:
        raise ValueError(f"--trace-config {entry}: unknown opentelemetry setting '{key}' (expect "
                         f"{', '.join(OTEL_SETTINGS)})")
    if key == "resource" and "=" not in value:
        raise ValueError(f"--trace-config {entry}: expect opentelemetry,resource=KEY=VALUE")
    if key.startswith("bsp_") and not value.isdigit():
        raise ValueError(f"--trace-config {entry}: expect a whole number")
    if key == "exporter" and value not in ("otlp", "console", "file"):
        raise ValueError(f"--trace-config {entry}: expect exporter=otlp, console or file")
    if key == "protocol" and value not in ("http/protobuf", "grpc"):
        raise ValueError(f"--trace-config {entry}: expect protocol=http/protobuf or grpc")
    return key, value


# ---- traces and where they go ----


class TraceExporter(Protocol):
    """Where finished traces go (a file here; an OpenTelemetry exporter would be another)."""

    def export(self, record: dict[str, Any], settings: TraceSettings) -> None: ...

    def close(self) -> None: ...


class JsonFileTraceExporter:
    """Triton's trace file: one JSON array of trace records.

    Records are written as they finish, and the file is a complete JSON array after every write (the closing
    bracket is written again each time), so it can be read while the server runs. With `log_frequency` N > 0,
    every N traces go to the next file `<trace_file>.<n>`, as Triton does.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._file: Any = None
        self._index: int | None = None
        self._written = 0
        self._failed = False

    def export(self, record: dict[str, Any], settings: TraceSettings) -> None:
        data = orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY)
        frequency = settings.log_frequency
        with self._lock:
            try:
                index = self._written // frequency if frequency > 0 else None
                if self._file is None or index != self._index:
                    self._open(index)
                    self._file.write(b"[\n" + data + b"\n]\n")
                else:
                    self._file.seek(-3, os.SEEK_END)
                    self._file.write(b",\n" + data + b"\n]\n")
                self._file.flush()
                self._written += 1
            except OSError as exc:  # a full disk or a bad path must not fail the request
                if not self._failed:
                    log.error("cannot write the trace file %s: %s", self.path, exc)
                self._failed = True

    def _open(self, index: int | None) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        path = self.path if index is None else f"{self.path}.{index}"
        self._file = open(path, "w+b")  # kept open across writes; closed in close()
        self._index = index

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


def _tensor_entries(activity: str, tensors: Mapping[str, np.ndarray]) -> list[dict[str, Any]]:
    entries = []
    for name, array in tensors.items():
        if array.dtype == np.object_:
            data: Any = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in array.flat]
        else:
            data = array.ravel().tolist()
        try:
            datatype = datatype_of(array)
        except InferError:
            datatype = str(array.dtype)
        entries.append({"activity": activity, "name": name, "datatype": datatype,
                        "shape": list(array.shape), "data": data})
    return entries


# The sampled request running in this task (or thread): the parent of the traces its graph steps start.
_CURRENT: contextvars.ContextVar[Trace | None] = contextvars.ContextVar("inferd_trace", default=None)


class Trace:
    """One request's trace: when it reached each stage (and, at level TENSORS, what went into and came out
    of the model). `sampled` is False for a request followed only for the verbose request log. `parent` is the
    trace of the graph request this one is a step of; `otel_span` its OpenTelemetry span (mode opentelemetry)."""

    __slots__ = ("id", "model_name", "model_version", "otel", "otel_span", "parent", "protocol", "request_id",
                 "sampled", "settings", "tensors", "timestamps", "token")

    def __init__(self, trace_id: int, model_name: str, model_version: int, request_id: str,
                 settings: TraceSettings | None, start_ns: int, parent: Trace | None = None,
                 protocol: str = "") -> None:
        self.id = trace_id
        self.model_name = model_name
        self.model_version = model_version
        self.request_id = request_id
        self.settings = settings
        self.sampled = settings is not None
        self.parent = parent
        self.protocol = protocol
        self.otel: OtelTracing | None = None
        self.otel_span: Any = None
        self.token: contextvars.Token[Trace | None] | None = None
        self.timestamps: list[tuple[str, int]] = [("REQUEST_START", start_ns)]
        self.tensors: list[dict[str, Any]] | None = [] if settings is not None and "TENSORS" in settings.level \
            else None

    @property
    def traceparent(self) -> str:
        """The W3C traceparent of this request's span ("" outside mode opentelemetry)."""
        return self.otel.traceparent(self) if self.otel is not None and self.otel_span is not None else ""

    def mark(self, name: str, ns: int) -> None:
        self.timestamps.append((name, ns))

    def computed(self, queued: int, start: int, inputs_ready: int, outputs_ready: int, end: int,
                 inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray] | BaseException) -> None:
        """The execution that ran this request (called by the instance pool, on whichever thread ran it)."""
        self.timestamps += [("QUEUE_START", queued), ("COMPUTE_START", start), ("COMPUTE_INPUT_END", inputs_ready),
                            ("COMPUTE_OUTPUT_START", outputs_ready), ("COMPUTE_END", end)]
        if self.tensors is not None:
            self.tensors += _tensor_entries("TENSOR_BACKEND_INPUT", inputs)
            if not isinstance(outputs, BaseException):
                self.tensors += _tensor_entries("TENSOR_BACKEND_OUTPUT", outputs)

    def record(self) -> dict[str, Any]:
        record: dict[str, Any] = {
            "id": self.id, "model_name": self.model_name, "model_version": self.model_version,
            "request_id": self.request_id,
            "timestamps": [{"name": name, "ns": ns} for name, ns in self.timestamps],
        }
        if self.parent is not None:
            record["parent_id"] = self.parent.id
        if self.tensors is not None:
            record["tensors"] = self.tensors
        return record

    def span(self, first: str, last: str) -> int | None:
        marks = dict(self.timestamps)
        if first in marks and last in marks:
            return marks[last] - marks[first]
        return None


class _Sampler:
    """One setting's sampling state: which request is next to trace and how many traces are left."""

    __slots__ = ("left", "lock", "seen", "settings")

    def __init__(self, settings: TraceSettings) -> None:
        self.settings = settings
        self.seen = 0
        self.left = settings.count
        self.lock = threading.Lock()

    def sample(self) -> bool:
        if self.settings.rate <= 0:  # opentelemetry's rate 0: only requests with a sampled traceparent
            return False
        with self.lock:
            if self.left == 0:
                return False
            self.seen += 1
            if self.seen % self.settings.rate:
                return False
            if self.left > 0:
                self.left -= 1
            return True


class Tracer:
    """The server's trace settings (global and per model), sampling, and the exporters of finished traces."""

    def __init__(self, settings: TraceSettings | None = None,
                 exporter_factory: Callable[[TraceSettings], TraceExporter] | None = None) -> None:
        initial = settings or TraceSettings()
        if initial.level and not initial.file and initial.mode == "triton":
            raise ValueError("tracing needs a trace file (TraceSettings.file)")
        # Mode opentelemetry: the OpenTelemetry SDK, its exporter and batch span processor (raises ValueError
        # naming the `otel` extra when OpenTelemetry is not installed).
        self._otel: OtelTracing | None = None
        if initial.mode == "opentelemetry":
            from .otel import OtelTracing

            self._otel = OtelTracing(initial.otel)
        self._initial = initial
        self._global = _Sampler(initial)
        self._overrides: dict[str, dict[str, Any]] = {}  # model -> the fields set for it alone
        self._models: dict[str, _Sampler] = {}
        self._exporter_factory = exporter_factory or (lambda s: JsonFileTraceExporter(s.file))
        self._exporters: dict[tuple[str, str], TraceExporter] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._log_requests = False
        self.enabled = False  # the one attribute the request path reads
        self._refresh()

    # ---- settings ----

    def settings(self, model_name: str = "") -> SettingsJson:
        sampler = self._models.get(model_name, self._global) if model_name else self._global
        return sampler.settings.to_json(sampler.left)

    def update(self, values: Mapping[str, Any], model_name: str = "", *, allow_file: bool = False) -> SettingsJson:
        """Change settings as Triton's trace API does: only the given ones; null (or an empty list) clears one,
        which for a model means "follow the global setting" again. A model's first update copies the global
        settings it does not set; an update for a model without any setting removes all of its own."""
        changes = parse_updates(values, allow_file=allow_file)
        with self._lock:
            if not model_name:
                fields = {k: getattr(self._initial, k) if v is _CLEAR else v for k, v in changes.items()}
                settings = dataclasses.replace(self._global.settings, **fields)
                settings.check()
                if changes:
                    self._global = _Sampler(settings)
                for name in list(self._models):
                    self._set_model(name, self._overrides[name])
            else:
                own = dict(self._overrides.get(model_name, {}))
                if not changes:
                    own.clear()
                for key, value in changes.items():
                    if value is _CLEAR:
                        own.pop(key, None)
                    else:
                        own[key] = value
                self._set_model(model_name, own)
            self._refresh()
        return self.settings(model_name)

    def _set_model(self, name: str, own: dict[str, Any]) -> None:
        if not own:
            self._overrides.pop(name, None)
            self._models.pop(name, None)
            return
        settings = dataclasses.replace(self._global.settings, **own)
        settings.check()
        self._overrides[name] = own
        current = self._models.get(name)
        if current is None or current.settings != settings:
            self._models[name] = _Sampler(settings)

    def log_requests(self, on: bool) -> None:
        """Follow every request for a debug line at its end (the verbose log)."""
        with self._lock:
            self._log_requests = on
            self._refresh()

    def _refresh(self) -> None:
        self.enabled = self._log_requests or self._global.settings.active or any(
            s.settings.active for s in self._models.values())

    # ---- the request path (only while `enabled`) ----

    def begin(self, model_name: str, model_version: int, request_id: str, start_ns: int,
              header: Callable[[str], str | None] | None = None, protocol: str = "") -> Trace | None:
        """A trace for this request when it is sampled: a step of a traced graph always is (as its child), a
        request with a sampled W3C traceparent is in mode opentelemetry, others every `rate`-th. `header` reads
        the request's HTTP headers / gRPC metadata (only in mode opentelemetry, only for the traceparent)."""
        sampler = self._models.get(model_name, self._global) if self._models else self._global
        settings = sampler.settings
        parent = _CURRENT.get()
        if parent is not None and parent.settings is not None:
            return self._start(model_name, model_version, request_id, start_ns, parent.settings, parent, None,
                               protocol)
        if settings.active:
            otel = self._otel
            propagated = otel is not None and header is not None and _sampled_parent(header("traceparent"))
            if propagated or sampler.sample():
                return self._start(model_name, model_version, request_id, start_ns, settings, None, header,
                                   protocol)
        if self._log_requests:
            return Trace(0, model_name, model_version, request_id, None, start_ns)
        return None

    def _start(self, model_name: str, model_version: int, request_id: str, start_ns: int, settings: TraceSettings,
               parent: Trace | None, header: Callable[[str], str | None] | None, protocol: str) -> Trace:
        trace = Trace(next(self._ids), model_name, model_version, request_id, settings, start_ns, parent, protocol)
        if self._otel is not None and settings.mode == "opentelemetry":
            self._otel.start(trace, header)
        trace.token = _CURRENT.set(trace)
        return trace

    def end(self, trace: Trace, end_ns: int, error: BaseException | None = None) -> None:
        trace.mark("REQUEST_END", end_ns)
        if trace.token is not None:
            try:
                _CURRENT.reset(trace.token)
            except ValueError:  # ended in another context than it began in: no longer current here either
                _CURRENT.set(trace.parent)
            trace.token = None
        if trace.settings is not None:
            if trace.otel is not None:
                trace.otel.finish(trace, error)
            else:
                self._exporter(trace.settings).export(trace.record(), trace.settings)
        if self._log_requests:
            _log_request(trace, error)

    def _exporter(self, settings: TraceSettings) -> TraceExporter:
        key = (settings.mode, settings.file)
        exporter = self._exporters.get(key)
        if exporter is None:
            with self._lock:
                exporter = self._exporters.get(key)
                if exporter is None:
                    exporter = self._exporters[key] = self._exporter_factory(settings)
        return exporter

    def close(self) -> None:
        with self._lock:
            exporters = list(self._exporters.values())
            self._exporters.clear()
        for exporter in exporters:
            exporter.close()
        if self._otel is not None:
            self._otel.close()  # the spans still batched are sent


def _sampled_parent(traceparent: str | None) -> bool:
    """Whether a W3C traceparent (`00-TRACEID-SPANID-FLAGS`) asks for this request to be traced."""
    if not traceparent:
        return False
    parts = traceparent.strip().split("-")
    try:
        return len(parts) >= 4 and len(parts[1]) == 32 and bool(int(parts[3][:2], 16) & 1)
    except ValueError:
        return False


def current_trace() -> Trace | None:
    """The sampled request running in this task or thread, if any."""
    return _CURRENT.get()


@contextlib.contextmanager
def outgoing_headers(name: str, url: str) -> Iterator[dict[str, str]]:
    """Around a call to another server on behalf of the current request: in mode opentelemetry, a client span
    for the call and the headers (`traceparent`, `tracestate`) that carry it on; otherwise no headers."""
    trace = _CURRENT.get()
    if trace is None or trace.otel is None or trace.otel_span is None:
        yield {}
        return
    with trace.otel.remote_call(trace, name, url) as headers:
        yield headers


def _micros(ns: int | None) -> str:
    return "-" if ns is None else f"{ns / 1000:.0f}"


def _log_request(trace: Trace, error: BaseException | None) -> None:
    outcome = "ok" if error is None else f"failed: {getattr(error, 'message', None) or error}"
    request_log.debug("request %r to model '%s' version %s: %s; queue %s us, compute %s us, total %s us",
                      trace.request_id, trace.model_name, trace.model_version, outcome,
                      _micros(trace.span("QUEUE_START", "COMPUTE_START")),
                      _micros(trace.span("COMPUTE_START", "COMPUTE_END")),
                      _micros(trace.span("REQUEST_START", "REQUEST_END")))
