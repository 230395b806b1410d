"""The HTTP workers' channel (frontends/workers.py): length-prefixed messages however the bytes arrive, and tensors
over the threshold through reused shared-memory slots."""

from __future__ import annotations

import pickle
import struct
from typing import Any

import numpy as np

from inferd.frontends.workers import Channel, Slots, mapped_tensors
from inferd.memory.arenas import ChildArenas


def _frames(*messages: Any) -> bytes:
    out = b""
    for message in messages:
        payload = pickle.dumps(message)
        out += struct.pack("!I", len(payload)) + payload
    return out


def _received(chunks: list[bytes]) -> list[Any]:
    got: list[Any] = []
    channel = Channel(got.append, lambda: None)
    for chunk in chunks:
        channel.data_received(chunk)
    return got


def test_messages_whole_split_and_together() -> None:
    big = ("infer", 1, np.arange(50_000, dtype=np.float32))
    data = _frames(("ready", 8000), big, ("free", 3))
    expected = [("ready", 8000), big, ("free", 3)]
    for chunks in ([data], [data[i:i + 1] for i in range(0, 200)] + [data[200:]],
                   [data[i:i + 4096] for i in range(0, len(data), 4096)], [data[:5], data[5:]]):
        got = _received(chunks)
        assert [m[0] for m in got] == [m[0] for m in expected]
        np.testing.assert_array_equal(got[1][2], big[2])
        assert got[0] == expected[0] and got[2] == expected[2]


def test_a_partial_message_waits() -> None:
    data = _frames(("stop", 1.5))
    assert _received([data[:-1]]) == []
    assert _received([data[:3], data[3:]]) == [("stop", 1.5)]


def test_small_tensors_go_inline_and_big_ones_through_a_reused_slot() -> None:
    slots = Slots(threshold=1024)
    arenas = ChildArenas()
    try:
        small = {"x": np.arange(4, dtype=np.int32)}
        inline, ref = slots.put(small)
        assert ref is None
        np.testing.assert_array_equal(mapped_tensors(arenas, inline, ref)["x"], small["x"])

        big = {"x": np.arange(1000, dtype=np.float32).reshape(10, 100), "s": np.array([b"a", b"b"], dtype=object)}
        inline, ref = slots.put(big)
        assert ref is not None and set(inline) == {"s"}  # objects have no fixed layout: pickled in the message
        got = mapped_tensors(arenas, inline, ref)
        np.testing.assert_array_equal(got["x"], big["x"])
        assert list(got["s"]) == [b"a", b"b"]
        first_slot = ref[0]
        _, second = slots.put(big)  # the first is still being read: another slot
        assert second is not None and second[0] != first_slot
        del got
        slots.release(first_slot)
        slots.release(second[0])
        again = {"x": np.full((10, 100), 7, dtype=np.float32)}
        _, ref = slots.put(again)
        assert ref is not None and ref[0] in (first_slot, second[0])
        np.testing.assert_array_equal(mapped_tensors(arenas, {}, ref)["x"], again["x"])
    finally:
        arenas.close()
        slots.close()


def test_past_the_slot_cap_tensors_go_inline() -> None:
    slots = Slots(threshold=16, max_slots=1)
    try:
        tensors = {"x": np.zeros(64, dtype=np.float64)}
        assert slots.put(tensors)[1] is not None
        inline, ref = slots.put(tensors)
        assert ref is None and set(inline) == {"x"}
    finally:
        slots.close()
