"""The response cache's parts as pure logic: the LRU's order and size, the request key, the flag's parsing."""

from __future__ import annotations

import numpy as np
import pytest

from inferd.caching import CacheOptions, ResponseCache, entry_size, request_key
from inferd.types import InferenceRequest, RequestedOutput


def _outputs(value: int, size: int = 16) -> dict[str, np.ndarray]:
    return {"OUT": np.full(size, value, dtype=np.int32)}


def test_a_lookup_makes_an_entry_the_most_recent_and_the_oldest_is_evicted() -> None:
    cache = ResponseCache(3 * entry_size(_outputs(0)))
    for key in "abc":
        assert cache.put(key, _outputs(ord(key)))
    assert cache.get("a") is not None  # "b" is now the least recently used
    cache.put("d", _outputs(4))
    assert cache.get("b") is None and cache.get("a") is not None and cache.get("d") is not None
    assert len(cache) == 3 and cache.evictions == 1 and cache.used <= cache.size


def test_cached_arrays_are_read_only_copies() -> None:
    cache = ResponseCache(10_000)
    batch = np.arange(32, dtype=np.int32)
    cache.put("k", {"OUT": batch[:16]})
    batch[:] = -1
    kept = cache.get("k")
    assert kept is not None and kept["OUT"].tolist() == list(range(16))
    with pytest.raises(ValueError):
        kept["OUT"][0] = 5


def test_an_answer_larger_than_the_cache_is_not_kept() -> None:
    cache = ResponseCache(100)
    assert not cache.put("big", _outputs(1, 1000))
    assert cache.get("big") is None and cache.used == 0


def test_entry_size_counts_bytes_elements_and_overhead() -> None:
    strings = {"S": np.array([b"abc", b"de"], dtype=np.object_)}
    assert entry_size(strings) == entry_size({"S": np.zeros(0, np.int8)}) + 5 + 2 * 4
    assert entry_size(_outputs(0, 100)) - entry_size(_outputs(0, 0)) == 400


def _request(x: np.ndarray, datatype: str = "INT32", outputs: list[RequestedOutput] | None = None,
             name: str = "X") -> InferenceRequest:
    return InferenceRequest("m", {name: x}, {name: datatype}, outputs=outputs)


def test_keys_differ_with_whatever_the_answer_depends_on() -> None:
    x = np.arange(6, dtype=np.int32).reshape(2, 3)
    keys = {
        request_key(1, _request(x)),
        request_key(2, _request(x)),  # another loaded version
        request_key(1, _request(x.reshape(3, 2))),  # same bytes, other shape
        request_key(1, _request(x.astype(np.uint32), "UINT32")),  # same bytes, other datatype
        request_key(1, _request(x + 1)),
        request_key(1, _request(x, name="Y")),
        request_key(1, _request(x, outputs=[RequestedOutput("A")])),
        request_key(1, _request(x, outputs=[RequestedOutput("A", {"classification": 2})])),
        request_key(1, _request(x, outputs=[RequestedOutput("A", {"classification": 3})])),
        request_key(1, _request(np.array([b"ab", b"c"], dtype=np.object_), "BYTES")),
        request_key(1, _request(np.array([b"a", b"bc"], dtype=np.object_), "BYTES")),
    }
    assert len(keys) == 11
    # how an output is sent (binary or JSON) is not part of the answer; a non-contiguous view hashes as its values
    assert request_key(1, _request(x, outputs=[RequestedOutput("A", {"binary_data": True})])) == \
        request_key(1, _request(x, outputs=[RequestedOutput("A")]))
    assert request_key(1, _request(np.asfortranarray(x))) == request_key(1, _request(x.copy()))


def test_cache_config_flags() -> None:
    assert CacheOptions.parse([]) is None
    assert CacheOptions.parse(["local,size=1048576"]) == CacheOptions("local", 1048576)
    assert CacheOptions.parse(["local,size=10", "local,size=20"]) == CacheOptions("local", 20)
    for bad in (["redis,size=1"], ["local,size=0"], ["local,size=-5"], ["size=5"], ["local,sizes=5"]):
        with pytest.raises(ValueError):
            CacheOptions.parse(bad)
