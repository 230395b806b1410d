"""One request on its way through the pipeline: what arrived (request, context) and what the stages decided."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from ..types import InferenceRequest, InferenceResponse, InferError

if TYPE_CHECKING:
    from ..model import ServedModel
    from ..observability import Trace
    from ..scheduling import Job, Tensors

__all__ = ["SDK", "Call", "RequestContext"]

log = logging.getLogger("inferd.pipeline")


class RequestContext:
    """Where a request came from, in a protocol-neutral form: the protocol's name, and its headers (HTTP) or
    metadata (gRPC) read by name. Headers are looked up only when a stage asks (authentication, routing by host,
    trace propagation), so a request that no stage asks about pays nothing for them."""

    __slots__ = ("_headers", "_metadata", "endpoint", "peer", "principal", "protocol", "variant")

    def __init__(self, protocol: str, headers: Mapping[bytes, bytes] | None = None,
                 metadata: Callable[[], Iterable[tuple[str, Any]] | None] | None = None, peer: str = "",
                 endpoint: str = "", principal: Any = None) -> None:
        self.protocol = protocol  # "v2-http", "v2-grpc", "v1", "torchserve", "seldon", "sdk", "bls"
        self._headers = headers
        self._metadata = metadata
        self.peer = peer  # the client's address, "host:port"
        self.endpoint = endpoint  # the route pattern, or the gRPC method
        # Who the front door found the caller to be (the gateway's Principal), when it authenticated the request
        # before decoding it; None: the `authenticate` stage looks at the key itself.
        self.principal = principal
        # The traffic variant that served the request (set by the `traffic` stage when its name is split): the
        # front door names it in the answer (X-Inferd-Variant).
        self.variant = ""

    def header(self, name: str) -> str | None:
        """An HTTP header or gRPC metadata value by its (case-insensitive) name; None when absent."""
        name = name.lower()
        if self._headers is not None:
            value = self._headers.get(name.encode("latin-1"))
            return None if value is None else value.decode("latin-1")
        if self._metadata is not None:
            for key, value in self._metadata() or ():
                if key.lower() == name:
                    return value.decode("latin-1") if isinstance(value, bytes) else str(value)
        return None


SDK = RequestContext("sdk")


class Call:
    """One request in the pipeline. Stages read and fill it in order:

    - `request`, `context`: what arrived (a stage may rewrite the request's target before `resolve`);
    - `model`: the version that serves it (set by `resolve`); `job`: its place in the scheduler (`admit`);
    - `results`: the model's raw outputs (`schedule`); `response`: the answer (`respond`);
    - `error`: set before the finish callbacks run when the request failed (an InferError, or CancelledError);
    - `state`: a dictionary for stages to leave notes for later ones (a tenant's name, say).
    """

    __slots__ = ("_finish", "_state", "admitted", "cause", "context", "error", "job", "model", "request", "response",
                 "results", "start_ns", "sync", "trace")

    def __init__(self, request: InferenceRequest, context: RequestContext, start_ns: int, sync: bool) -> None:
        self.request = request
        self.context = context
        self.start_ns = start_ns
        self.sync = sync  # run on the caller's thread (SDK, BLS): stages must not need an event loop
        # Set by `resolve`; stages placed before it see None (`served()` says so clearly).
        self.model: ServedModel = None  # type: ignore[assignment]
        self.job: Job | None = None
        self.admitted: Any = None
        self.results: Tensors | None = None
        self.response: InferenceResponse | None = None
        self.error: BaseException | None = None
        self.cause: BaseException | None = None  # what the error came from (a model's own exception, say)
        self.trace: Trace | None = None
        self._finish: list[Callable[[Call], None]] | None = None
        self._state: dict[str, Any] | None = None

    @property
    def state(self) -> dict[str, Any]:
        if self._state is None:
            self._state = {}
        return self._state

    def served(self) -> ServedModel:
        """The resolved model (for stages placed after `resolve`)."""
        model = self.model
        if model is None:
            raise InferError.internal("a pipeline stage that needs the model runs before 'resolve'")
        return model

    def on_finish(self, callback: Callable[[Call], None]) -> None:
        """Run `callback(call)` when the request ends, however it ends (last registered, first run): for what a
        stage must undo or record — a slot to give back, statistics, an audit line. `error` tells the outcome."""
        if self._finish is None:
            self._finish = [callback]
        else:
            self._finish.append(callback)

    def finish(self) -> None:
        callbacks = self._finish
        if callbacks is None:
            return
        self._finish = None
        for callback in reversed(callbacks):
            try:
                callback(self)
            except Exception:  # one stage's bookkeeping must not cost the others theirs, nor the answer
                log.exception("a pipeline finish callback failed")
