"""The key of a request's answer: everything the answer depends on — the served version's token, the inputs
(names, datatypes, shapes and bytes) and the outputs asked for with their parameters (classification's k).

The key holds the input bytes themselves, not a digest of them: two requests share an entry only when they are
equal, and for the small inputs a cache pays off on, hashing Python's way is faster than a cryptographic digest.
The bytes count against the cache's size (`key_size`).
"""

from __future__ import annotations

from collections.abc import Hashable

from ..types import InferenceRequest

# Output parameters that change how an answer is sent, not what it holds.
_WIRE_ONLY = frozenset({"binary_data"})

RequestKey = tuple[Hashable, ...]


def request_key(token: int, request: InferenceRequest) -> RequestKey:
    """A flat tuple: token, then name, datatype, shape, data per input (by name), then the requested outputs."""
    inputs = request.inputs
    datatypes = request.datatypes
    parts: list[Hashable] = [token]
    for name in sorted(inputs) if len(inputs) > 1 else inputs:
        array = inputs[name]
        if array.dtype.hasobject:  # BYTES: each element with its length, so ["ab", "c"] differs from ["a", "bc"]
            data = b"".join(len(v).to_bytes(8, "little") + v
                            for v in (x if isinstance(x, bytes) else str(x).encode() for x in array.flat))
        else:
            data = array.tobytes()
        parts += (name, datatypes.get(name) or array.dtype.str, array.shape, data)
    outputs = request.outputs
    if outputs:
        parts.append(None)  # where the outputs begin (no input part is None)
        for out in outputs:
            params = out.parameters
            parts.append(out.name)
            parts.append(tuple(sorted((k, str(v)) for k, v in params.items() if k not in _WIRE_ONLY))
                         if params else ())
    return tuple(parts)


def key_size(key: RequestKey) -> int:
    """The bytes of a key's data (what it adds to its entry's size beyond the fixed overhead)."""
    return sum(len(part) for part in key if isinstance(part, (bytes, str)))
