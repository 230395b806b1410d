"""Payload logging in KServe's logger form: each request and its response as CloudEvents, sent off the hot path.

`--payload-log URL` posts every event to an HTTP sink in CloudEvents' binary mode, as KServe's logger agent does:
the payload is the body and the event's attributes are headers — `ce-specversion: 1.0`, `ce-type:
org.kubeflow.serving.inference.request` (or `.response`), `ce-id` (the request id, the same on both events),
`ce-source`, `ce-time`, and KServe's extensions `ce-inferenceservicename`, `ce-namespace`, `ce-component`,
`ce-endpoint` (the traffic variant that served it) and, for a traced request, `ce-traceparent`.
`--payload-log file:PATH` appends the same events to PATH in CloudEvents' structured JSON form, one per line.

A request only puts one item in a bounded deque (no lock, no wake-up); a writer thread drains it. When the deque is
full the item is dropped, when the sink cannot be reached the writer drops what it holds and waits a while before
it tries again (so a sink that is down costs the requests nothing but the append): every dropped event is counted
in `inferd_payload_log_dropped_total{reason}` — `queue_full`, `sink_unreachable`, `sink_error` (the sink
answered an error status) or `shutdown` (still queued when the server stopped).
"""

from __future__ import annotations

import base64
import collections
import datetime
import http.client
import logging
import os
import socket
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator, Mapping
from typing import IO, Any

import numpy as np
import orjson
from prometheus_client.core import CounterMetricFamily, Metric

__all__ = ["DEFAULT_QUEUE_SIZE", "MODES", "PayloadLogger", "PayloadRecord"]

log = logging.getLogger("inferd.payload_log")

REQUEST_TYPE = "org.kubeflow.serving.inference.request"
RESPONSE_TYPE = "org.kubeflow.serving.inference.response"
MODES = ("all", "request", "response", "none")
DEFAULT_QUEUE_SIZE = 10_000
RETRY_AFTER_S = 1.0  # after a failed delivery, how long the writer drops events before it tries the sink again
SEND_TIMEOUT_S = 5.0
BATCH_EVENTS = 64  # events the writer sends together (pipelined) when the queue holds that many
_IDLE_WAIT_S = 0.01
_REASONS = ("queue_full", "sink_unreachable", "sink_error", "shutdown")


class PayloadRecord:
    """What one request leaves for the writer: references only (encoding happens on the writer thread)."""

    __slots__ = ("end_ns", "endpoint", "error", "id", "mode", "model", "request", "response", "start_ns",
                 "traceparent", "version")

    def __init__(self, mode: str, request_id: str, model: str, version: str, request: Any, response: Any,
                 error: str | None, endpoint: str, traceparent: str, start_ns: int, end_ns: int) -> None:
        self.mode = mode
        self.id = request_id
        self.model = model
        self.version = version
        self.request = request
        self.response = response
        self.error = error
        self.endpoint = endpoint
        self.traceparent = traceparent
        self.start_ns = start_ns
        self.end_ns = end_ns


class PayloadLogger:
    """The bounded queue, the writer thread and the sink (HTTP or file) of the payload log."""

    def __init__(self, target: str, *, source: str = "", queue_size: int = DEFAULT_QUEUE_SIZE,
                 namespace: str | None = None, component: str = "predictor") -> None:
        if queue_size < 1:
            raise ValueError("--payload-log-queue must be at least 1")
        self.sink = _sink(target)
        self.target = target
        self.source = source or "inferd"
        self.namespace = os.environ.get("POD_NAMESPACE", "") if namespace is None else namespace
        self.component = component
        self.queue_size = queue_size
        self._queue: collections.deque[PayloadRecord] = collections.deque()
        self.dropped = dict.fromkeys(_REASONS, 0)  # events, by reason
        self._lock = threading.Lock()
        self.sent = 0
        self._retry_at = 0.0
        self._down = False  # the last delivery could not reach the sink
        self._stop = threading.Event()
        # Wall-clock event times from the pipeline's perf_counter nanoseconds: one offset, taken once.
        self._offset = time.time_ns() - time.perf_counter_ns()
        self.metrics = PayloadLogMetrics(self)
        self._thread = threading.Thread(target=self._run, name="inferd-payload-log", daemon=True)
        self._thread.start()

    # ---- the request path ----

    def refusal(self) -> str:
        """Why a record would be dropped now ("" when it would be queued): the queue is full, or the sink is down
        and the writer already holds the one record it tries the sink with next (no request's tensors are held
        for nothing). The stage asks before it builds a record, so a dropped request costs only this."""
        queue = self._queue
        if self._down and queue:
            return "sink_unreachable"
        if len(queue) >= self.queue_size:
            return "queue_full"
        return ""

    def drop(self, reason: str, mode: str) -> None:
        """Count a request's events as dropped for `reason` (see `refusal`)."""
        self._count(reason, 2 if mode == "all" else 1)

    def put(self, record: PayloadRecord) -> None:
        """Queue a request's record; never waits. A full queue drops it (its events counted); so does a sink that
        is down (see `refusal`)."""
        reason = self.refusal()
        if reason:
            self.drop(reason, record.mode)
        else:
            self._queue.append(record)

    def _count(self, reason: str, events: int) -> None:
        with self._lock:
            self.dropped[reason] += events

    # ---- the writer thread ----

    def _run(self) -> None:
        queue = self._queue
        while not self._stop.is_set():
            if not queue:
                self._stop.wait(_IDLE_WAIT_S)
                continue
            self._drain()

    def _drain(self) -> None:
        queue = self._queue
        while queue:
            now = time.monotonic()
            if now < self._retry_at:  # the sink was unreachable a moment ago: wait, then try again
                self._stop.wait(self._retry_at - now)
                if self._stop.is_set():
                    return
                self._drop_queued("sink_unreachable")  # what piled up meanwhile cannot go out in time
                continue
            events: list[_Event] = []
            while queue and len(events) < BATCH_EVENTS:
                events += self._events(queue.popleft())
            self._deliver(events)
        self.sink.flush()

    def _deliver(self, events: list[_Event]) -> None:
        """Send what the queue held (up to BATCH_EVENTS): to an HTTP sink, pipelined on one connection (one
        write for all, then their answers in order), one POST per event as KServe's logger sends them."""
        try:
            results = self.sink.send_all(events)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            self._count("sink_unreachable", len(events))  # not known to have arrived
            if not self._down:
                log.warning("payload log: %s cannot be reached (%s); events are dropped until it can",
                            self.target, exc)
            self._retry_at = time.monotonic() + RETRY_AFTER_S
            self._down = True
            return
        if self._down:
            log.info("payload log: %s can be reached again", self.target)
        self._down = False
        delivered = sum(results)
        self.sent += delivered
        if delivered < len(results):
            self._count("sink_error", len(results) - delivered)

    def _drop_queued(self, reason: str) -> None:
        queue = self._queue
        count = 0
        while queue:
            record = queue.popleft()
            count += 2 if record.mode == "all" else 1
        if count:
            self._count(reason, count)

    def _events(self, record: PayloadRecord) -> Iterator[_Event]:
        if not record.id:  # made here, off the request's path: the same on both events
            record.id = uuid.uuid4().hex
        common = {"id": record.id, "source": self.source, "inferenceservicename": record.model,
                  "namespace": self.namespace, "component": self.component, "endpoint": record.endpoint}
        if record.traceparent:
            common["traceparent"] = record.traceparent
        if record.mode in ("all", "request"):
            yield _Event(REQUEST_TYPE, _time(record.start_ns + self._offset), common, _request_body(record))
        if record.mode in ("all", "response"):
            yield _Event(RESPONSE_TYPE, _time(record.end_ns + self._offset), common, _response_body(record))

    def close(self, timeout: float = 5.0) -> None:
        """Send what is queued (for up to `timeout` s), then stop; what is left is counted as dropped."""
        deadline = time.monotonic() + timeout
        while self._queue and self._thread.is_alive():
            now = time.monotonic()
            if now >= deadline or now < self._retry_at:  # out of time, or the sink is down: no use waiting
                break
            time.sleep(0.01)
        self._stop.set()
        self._thread.join(timeout=max(0.0, deadline - time.monotonic()) + 1.0)
        self._drop_queued("shutdown")
        self.sink.close()


class _Event:
    __slots__ = ("attributes", "body", "time", "type")

    def __init__(self, type_: str, time_: str, attributes: Mapping[str, str], body: bytes) -> None:
        self.type = type_
        self.time = time_
        self.attributes = attributes
        self.body = body


# ---- sinks ----


class _HttpSink:
    """CloudEvents' binary HTTP mode over one kept-alive connection: each event is one POST written with one
    `sendall` (no Nagle / delayed-ACK stall between headers and body), and the answer's status line and headers are
    read by hand (http.client's parser costs more than the rest of an event)."""

    def __init__(self, url: str) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"--payload-log {url}: expect an http(s):// URL or file:PATH")
        self.https = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.https else 80)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host = self.host if parts.port is None else f"{self.host}:{self.port}"
        self._head = f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n" \
            "ce-specversion: 1.0\r\n".encode("latin-1")
        self._socket: socket.socket | None = None
        self._pending = b""  # bytes read past the last answer (none, from a well-behaved sink)

    def send_all(self, events: list[_Event]) -> list[bool]:
        """POST each event; whether each was taken (2xx). Pipelined: all written at once, then the answers read
        in order; a sink that closes the connection after an answer gets the rest on a new one."""
        results: list[bool] = []
        while len(results) < len(events):
            sock = self._socket
            if sock is None:
                sock = self._socket = self._connect()
            pending = events[len(results):]
            try:
                sock.sendall(b"".join(self._request(event) for event in pending))
                for _ in pending:
                    status, keep = self._answer(sock)
                    results.append(200 <= status < 300)
                    if not keep:
                        self.close()
                        break
            except BaseException:
                self.close()
                raise
        return results

    def _request(self, event: _Event) -> bytes:
        lines = [self._head, b"ce-type: ", event.type.encode(), b"\r\nce-time: ", event.time.encode()]
        for key, value in event.attributes.items():
            lines += [b"\r\nce-", key.encode(), b": ", _header_value(value)]
        lines += [b"\r\nContent-Length: ", str(len(event.body)).encode(), b"\r\n\r\n", event.body]
        return b"".join(lines)

    def _connect(self) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout=SEND_TIMEOUT_S)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.https:
            import ssl

            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=self.host)
        self._pending = b""
        return sock

    def _answer(self, sock: socket.socket) -> tuple[int, bool]:
        """Read one answer: (status, whether the connection stays open)."""
        data = self._pending
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                raise http.client.RemoteDisconnected("the sink closed the connection without an answer")
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
            raise http.client.BadStatusLine(status_line)
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        keep = parts[0] == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
        if headers.get("transfer-encoding", "").lower() == "chunked":
            rest = self._chunked(sock, rest)
        else:
            length = int(headers.get("content-length", "0" if keep else "-1"))
            if length < 0:  # no length: the body runs to the end of the connection
                return int(parts[1]), False
            while len(rest) < length:
                chunk = sock.recv(65536)
                if not chunk:
                    raise http.client.IncompleteRead(rest)
                rest += chunk
            rest = rest[length:]
        self._pending = rest
        return int(parts[1]), keep

    @staticmethod
    def _chunked(sock: socket.socket, data: bytes) -> bytes:
        """Skip a chunked body; returns what was read past it."""
        while True:
            while b"\r\n" not in data:
                chunk = sock.recv(65536)
                if not chunk:
                    raise http.client.IncompleteRead(data)
                data += chunk
            size_line, _, data = data.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            while len(data) < size + 2:
                chunk = sock.recv(65536)
                if not chunk:
                    raise http.client.IncompleteRead(data)
                data += chunk
            data = data[size + 2:]
            if size == 0:  # (no trailers expected from a sink)
                return data

    def flush(self) -> None:
        pass

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def _header_value(value: str) -> bytes:
    """A header value as bytes, without the characters that would end the header."""
    return value.replace("\r", " ").replace("\n", " ").encode("latin-1", "replace")


class _FileSink:
    """CloudEvents' structured JSON form, one event a line."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._file: IO[bytes] = open(path, "ab")  # closed in close()

    def send_all(self, events: list[_Event]) -> list[bool]:
        self._file.write(b"".join(orjson.dumps({
            "specversion": "1.0", "type": event.type, "time": event.time, **event.attributes,
            "datacontenttype": "application/json", "data": orjson.Fragment(event.body)}) + b"\n" for event in events))
        return [True] * len(events)

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def _sink(target: str) -> _HttpSink | _FileSink:
    if target.startswith("file:"):
        path = target[len("file:"):]
        if not path:
            raise ValueError("--payload-log file:PATH needs a path")
        return _FileSink(path)
    return _HttpSink(target)


# ---- bodies: the V2 (Open Inference Protocol) JSON of the request and the answer ----


def _request_body(record: PayloadRecord) -> bytes:
    request = record.request
    if request.message is not None:  # a protocol message (Seldon's): logged as it came
        return orjson.dumps(request.message, option=orjson.OPT_SERIALIZE_NUMPY, default=_default)
    body: dict[str, Any] = {"id": record.id, "inputs": [
        _tensor(name, array, request.datatypes.get(name, "")) for name, array in request.inputs.items()]}
    if request.parameters:
        body["parameters"] = request.parameters
    if request.outputs:
        body["outputs"] = [{"name": o.name} for o in request.outputs]
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY, default=_default)


def _response_body(record: PayloadRecord) -> bytes:
    if record.error is not None:
        return orjson.dumps({"error": record.error})
    response = record.response
    if response.message is not None:
        return orjson.dumps(response.message, option=orjson.OPT_SERIALIZE_NUMPY, default=_default)
    body = {"model_name": response.model_name, "model_version": response.model_version, "id": record.id,
            "outputs": [_tensor(name, array, "") for name, array in response.outputs.items()]}
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY, default=_default)


def _tensor(name: str, array: np.ndarray, datatype: str) -> dict[str, Any]:
    from ..types import InferError, datatype_of

    if not datatype:
        try:
            datatype = datatype_of(array)
        except InferError:
            datatype = str(array.dtype)
    if array.dtype == np.object_:
        data: Any = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in array.flat]
    else:
        data = array.ravel()
    return {"name": name, "shape": list(array.shape), "datatype": datatype, "data": data}


def _default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return base64.b64encode(raw).decode("ascii")
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _time(wall_ns: int) -> str:
    """RFC 3339 in UTC with nanoseconds, as CloudEvents' time."""
    seconds, nanos = divmod(wall_ns, 1_000_000_000)
    stamp = datetime.datetime.fromtimestamp(seconds, tz=datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{nanos:09d}Z"


class PayloadLogMetrics:
    """`inferd_payload_log_events_total` (delivered) and `inferd_payload_log_dropped_total{reason}`."""

    def __init__(self, logger: PayloadLogger) -> None:
        self._logger = logger

    def collect(self) -> Iterator[Metric]:
        logger = self._logger
        sent = CounterMetricFamily("inferd_payload_log_events", "Payload log events delivered to the sink")
        sent.add_metric([], logger.sent)
        yield sent
        dropped = CounterMetricFamily("inferd_payload_log_dropped",
                                      "Payload log events dropped (queue full, sink unreachable or failing, "
                                      "shutdown)", labels=["reason"])
        for reason, count in logger.dropped.items():
            dropped.add_metric([reason], count)
        yield dropped
