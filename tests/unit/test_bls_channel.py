"""The child's pipe channel (instances/bls.py): each message reaches the thread waiting for it, whatever the order."""

from __future__ import annotations

import multiprocessing
import threading
from typing import Any

import numpy as np
import pytest

from inferd.instances.bls import BlsRequest, Channel
from inferd.types import ErrorKind, InferError


def test_replies_reach_their_waiters_in_any_order() -> None:
    server_end, child_end = multiprocessing.Pipe(duplex=True)
    channel = Channel(child_end)
    channel.active = True
    got: dict[int, Any] = {}

    def call(i: int) -> None:
        got[i] = channel.call(BlsRequest("m", "", {"x": np.full(2, i)}, ["y"]))

    threads = [threading.Thread(target=call, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    requests = [server_end.recv() for _ in threads]
    assert sorted(r[0] for r in requests) == ["bls"] * 3
    server_end.send(("execute", "next call"))  # the main loop's command may arrive among the replies
    for message in reversed(requests):
        _, call_id, _, _, inputs, _, _ = message
        server_end.send(("bls", call_id, None, {"y": inputs["x"] * 10}))
    for thread in threads:
        thread.join(timeout=10)
    assert channel.receive("command") == ("execute", "next call")
    assert {i: int(out["y"][0]) for i, out in got.items()} == {0: 0, 1: 10, 2: 20}


def test_errors_and_a_closed_pipe() -> None:
    server_end, child_end = multiprocessing.Pipe(duplex=True)
    channel = Channel(child_end)
    with pytest.raises(InferError) as outside:
        channel.call(BlsRequest("m", "", {}, []))  # not inside execute
    assert outside.value.kind == ErrorKind.UNSUPPORTED
    channel.active = True
    server_end.send(("bls", 1, ("NOT_FOUND", "no model 'm'"), None))
    with pytest.raises(InferError) as missing:
        channel.call(BlsRequest("m", "", {}, []))
    assert missing.value.kind == ErrorKind.NOT_FOUND and missing.value.message == "no model 'm'"
    server_end.close()
    with pytest.raises(InferError) as gone:
        channel.call(BlsRequest("m", "", {}, []))
    assert gone.value.kind == ErrorKind.UNAVAILABLE
