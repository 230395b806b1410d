"""The key of a request's answer: what the answer depends on, hashed — the inputs (names, datatypes, shapes and
bytes) and the outputs asked for with their parameters (classification's k), under the served version's token."""

from __future__ import annotations

import hashlib

import numpy as np

from ..types import InferenceRequest

# Output parameters that change how an answer is sent, not what it holds.
_WIRE_ONLY = frozenset({"binary_data"})


def request_key(token: int, request: InferenceRequest) -> tuple[int, bytes]:
    """`(token, 128-bit BLAKE2b digest)`. Every field is length-prefixed, so no two requests share a byte stream."""
    digest = hashlib.blake2b(digest_size=16)
    update = digest.update
    inputs = request.inputs
    datatypes = request.datatypes
    for name in sorted(inputs):
        array = inputs[name]
        update(f"i{len(name)}:{name}{datatypes.get(name, '')}:{array.shape}:".encode())
        if array.dtype == np.object_:
            for value in array.flat:
                data = value if isinstance(value, bytes) else str(value).encode()
                update(len(data).to_bytes(8, "little"))
                update(data)
        else:
            update(array.dtype.str.encode())
            update(np.ascontiguousarray(array).data)
    for out in request.outputs or ():
        params = tuple(sorted((k, str(v)) for k, v in out.parameters.items() if k not in _WIRE_ONLY)) \
            if out.parameters else ()
        update(f"o{len(out.name)}:{out.name}{params!r}".encode())
    return token, digest.digest()
