"""The payload log's HTTP sink client against a real TCP peer on 127.0.0.1 that answers as sinks in the wild do:
keep-alive with a length, chunked, `Connection: close`, an error status. Each event must arrive whole, with its
CloudEvents headers, and the outcome must be counted as the metric says."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

from inferd.observability.payload_log import PayloadLogger, PayloadRecord
from inferd.types import InferenceRequest, InferenceResponse

ANSWERS = {
    "length": b"HTTP/1.1 202 Accepted\r\nContent-Length: 2\r\n\r\nok",
    "chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    "close": b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n",
    "error": b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\nnope",
}


class Peer:
    """A TCP server that reads whole HTTP requests (by Content-Length) and answers each with one canned answer."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.connections = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        data = b""
        with conn:
            while True:
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                head, _, data = data.partition(b"\r\n\r\n")
                lines = head.decode().split("\r\n")
                headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
                length = int(headers["content-length"])
                while len(data) < length:
                    data += conn.recv(65536)
                body, data = data[:length], data[length:]
                self.requests.append((headers, body))
                conn.sendall(self.answer)
                if b"Connection: close" in self.answer:
                    return

    def close(self) -> None:
        self.listener.close()


@pytest.fixture(params=sorted(ANSWERS))
def peer(request: pytest.FixtureRequest) -> Iterator[Peer]:
    server = Peer(ANSWERS[request.param])
    yield server
    server.close()


def _record(i: int) -> PayloadRecord:
    request = InferenceRequest("m", {"X": np.arange(4, dtype=np.float32)}, {"X": "FP32"}, "", f"r{i}")
    response = InferenceResponse("m", "1", {"Y": np.array([b"a\r\nb"], dtype=object)}, f"r{i}")
    now = time.perf_counter_ns()
    return PayloadRecord("all", f"r{i}", "m", "1", request, response, None, "canary", "", now, now)


def test_every_event_arrives_whole_however_the_sink_answers(peer: Peer) -> None:
    logger = PayloadLogger(f"http://127.0.0.1:{peer.port}/log", source="http://here/")
    for i in range(5):
        logger.put(_record(i))
    deadline = time.monotonic() + 10
    while len(peer.requests) < 10 and time.monotonic() < deadline:
        time.sleep(0.01)
    logger.close()
    assert len(peer.requests) == 10
    headers, body = peer.requests[1]
    assert headers["ce-type"] == "org.kubeflow.serving.inference.response" and headers["ce-id"] == "r0"
    assert (headers["ce-endpoint"], headers["ce-source"], headers["host"]) == ("canary", "http://here/",
                                                                               f"127.0.0.1:{peer.port}")
    assert b'"data":["a\\r\\nb"]' in body  # BYTES as text, escaped in the JSON body
    if peer.answer is ANSWERS["error"]:
        assert (logger.sent, logger.dropped["sink_error"]) == (0, 10)
    else:
        assert (logger.sent, sum(logger.dropped.values())) == (10, 0)
    assert peer.connections == (10 if peer.answer is ANSWERS["close"] else 1)
