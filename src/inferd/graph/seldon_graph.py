"""Seldon Core inference graphs (a SeldonDeployment's `spec.predictors[].graph`) served as models, run as Seldon's
engine (the executor) runs them.

For each node of a request's path: transform-input (a MODEL's `predict`, a TRANSFORMER's `transform-input`), route
(a ROUTER's choice of one child, `-1` for all; recorded in `meta.routing`), the children (in parallel when several),
aggregate (a COMBINER over the children's answers; otherwise the first child's answer goes on), transform-output
(an OUTPUT_TRANSFORMER). A node's `methods` list, when given, replaces what its type implies. The answer's `meta`
holds the request's `puid` (one is made when it has none), the tags and metrics the nodes added, `routing`
({router node: chosen index}) and `requestPath` ({node: its container image, or the model it calls}).

Feedback (operation "send-feedback": Seldon's Feedback message {request, response, reward, truth}) walks the same
graph: a router's children get it only down the branch that router chose (read from the feedback's
`response.meta.routing`, or else remembered by the request's `puid` for the last 10,000 requests), and every MODEL
and ROUTER node on the way gets it — a built-in bandit router learns from its `reward` there.

What a node is (seldon_nodes.py): a built-in `implementation` (routers.py, `AVERAGE_COMBINER`,
`SIMPLE_MODEL`), a prepackaged server (`implementation: SKLEARN_SERVER | XGBOOST_SERVER | TENSORFLOW_SERVER |
MLFLOW_SERVER | TRITON_SERVER` with `modelUri`, loaded as a model), a Python class in Seldon's wrapper style (a
container of the predictor's `componentSpecs` named like the node: env `MODEL_NAME`, `SERVICE_TYPE`, `workingDir`;
the node's `parameters` go to its constructor; served as a model with backend `seldon`), a remote endpoint
(`endpoint: {service_host, service_port, type: REST}`: Seldon's REST API on that host), or else the repository's
model of the node's name. Every node that is a model is called through the server's one pipeline (protocol
"graph"): a class node with whole SeldonMessages, a repository model with tensors (seldon_messages.py).
"""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.error
import urllib.request
from collections import OrderedDict
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from ..compat.seldon.engine import new_puid
from ..compat.seldon.protocol import SeldonError, SeldonFailure, extract
from ..model import ServedModel
from ..observability.tracing import outgoing_headers
from ..scheduling import Job
from ..types import MESSAGE_TENSOR, InferenceRequest, InferError, Tensors
from .graph_model import node_parameters
from .routers import Router
from .scheduler import GRAPH_PROTOCOL, InnerCalls
from .seldon_messages import Message, graph_outputs, model_inputs, outputs_message, tensors_message

__all__ = ["GRAPH_PLATFORM", "AverageCombiner", "Node", "RemoteNode", "RouterNode", "SeldonGraph", "ServedNode",
           "SimpleModel", "Unit"]

GRAPH_PLATFORM = "seldon_graph"
REMEMBERED_ROUTINGS = 10_000
REMOTE_TIMEOUT_S = 60.0
# Request ids need to be unique, not secret: a generator seeded from the system's randomness once (a system call
# per id costs more than the rest of a graph's bookkeeping).


class Models(Protocol):
    """What the graph reads of the model manager: a served model by name, and the pipeline (`inner`)."""

    inner: InnerCalls | None

    def get(self, name: str, version: str = "") -> ServedModel: ...


def _context() -> Any:
    from ..pipeline.call import RequestContext

    return RequestContext(GRAPH_PROTOCOL)


_CONTEXT = _context()


def _branch(answer: Message, node: str) -> int:
    """A router's answer (data [[i]]) as the index it chose."""
    try:
        features, _, _ = extract(answer)
        value = np.asarray(features).ravel()[0]
        if isinstance(value, (bool, np.bool_)):
            raise TypeError
        return int(value)
    except (SeldonError, IndexError, TypeError, ValueError):
        raise InferError.internal(f"router '{node}' answered no child index: {str(answer)[:200]}") from None


def _rows(message: Any) -> int:
    request = message.get("request") if isinstance(message, dict) else None
    data = request.get("data") if isinstance(request, dict) else None
    try:
        features, _, _ = extract({"data": data}) if isinstance(data, dict) else (None, None, None)
    except SeldonError:
        return 1
    shape = np.shape(features) if features is not None else ()
    return int(shape[0]) if shape else 1


class Node:
    """How one graph node is called. Each method gets and gives SeldonMessages; a node lacking a method is an
    error of the graph's definition (caught when it loads, by the node's type)."""

    async def transform(self, operation: str, message: Message) -> Message:
        raise InferError.internal(f"this node cannot {operation}")

    async def route(self, message: Message) -> Message:
        """The router's answer: its chosen child index as data [[i]] (and its meta)."""
        raise InferError.internal("this node cannot route")

    async def aggregate(self, messages: list[Message]) -> Message:
        raise InferError.internal("this node cannot aggregate")

    async def feedback(self, feedback: Message, branch: int | None) -> None:
        return None


class ServedNode(Node):
    """A node that is a served model, called through the pipeline: with whole messages when the model takes
    them (a Seldon class, another graph), else with its tensors."""

    def __init__(self, models: Models, model_name: str) -> None:
        self._models = models
        self.model_name = model_name

    async def _infer(self, request: InferenceRequest) -> Any:
        inner = self._models.inner
        if inner is None:
            raise InferError.unavailable("graphs are not served by this model manager")
        return await inner.infer_request(request, _CONTEXT)

    async def _message(self, operation: str, payload: Any) -> Message:
        request = InferenceRequest(self.model_name, {}, {}, message=payload, operation=operation,
                                   parameters=node_parameters())
        status, answer = (await self._infer(request)).message
        if status >= 400:
            raise SeldonFailure(status, answer)
        return answer if isinstance(answer, dict) else {"jsonData": answer}

    async def transform(self, operation: str, message: Message) -> Message:
        model = self._models.get(self.model_name)
        if model.takes_messages:
            return await self._message(operation, message)
        inputs, datatypes = model_inputs(message, model)
        response = await self._infer(InferenceRequest(self.model_name, inputs, datatypes,
                                                      parameters=node_parameters()))
        return outputs_message(response.outputs, message)

    async def route(self, message: Message) -> Message:
        if self._models.get(self.model_name).takes_messages:
            return await self._message("route", message)
        return await self.transform("predict", message)

    async def aggregate(self, messages: list[Message]) -> Message:
        if not self._models.get(self.model_name).takes_messages:
            raise InferError.invalid(f"model '{self.model_name}' takes tensors: it cannot combine messages")
        return await self._message("aggregate", {"seldonMessages": messages})

    async def feedback(self, feedback: Message, branch: int | None) -> None:
        if not self._models.get(self.model_name).takes_messages:
            return  # a repository model has nothing to learn
        # Seldon's wrapper reads its own choice from the response's routing (under its unit id, "0" here)
        response = feedback.get("response")
        response = dict(response) if isinstance(response, dict) else {}
        meta = response.get("meta")
        meta = dict(meta) if isinstance(meta, dict) else {}
        routing = meta.get("routing")
        routing = dict(routing) if isinstance(routing, dict) else {}
        if branch is not None:
            routing["0"] = branch
        meta["routing"] = routing
        response["meta"] = meta
        await self._message("send-feedback", {**feedback, "response": response})


class RouterNode(Node):
    """A built-in router (routers.py)."""

    def __init__(self, router: Router) -> None:
        self.router = router

    async def route(self, message: Message) -> Message:
        return {"data": {"names": [], "ndarray": [[self.router.route()]]}}

    async def feedback(self, feedback: Message, branch: int | None) -> None:
        if branch is None or branch < 0:
            return
        try:
            reward = float(feedback.get("reward") or 0.0)
        except (TypeError, ValueError):
            raise SeldonFailure(400, SeldonError("'reward' must be a number").to_dict()) from None
        self.router.feedback(branch, reward, _rows(feedback))


class AverageCombiner(Node):
    """Seldon's AVERAGE_COMBINER: the element-wise mean of the children's data (all of one shape)."""

    async def aggregate(self, messages: list[Message]) -> Message:
        arrays = []
        for message in messages:
            try:
                features, _, _ = extract(message)
                arrays.append(np.asarray(features, dtype=np.float64))
            except (SeldonError, TypeError, ValueError):
                raise InferError.invalid("AVERAGE_COMBINER averages numeric data; a child answered "
                                         f"{str(message)[:200]}") from None
        shapes = {a.shape for a in arrays}
        if len(shapes) != 1:
            raise InferError.invalid(f"AVERAGE_COMBINER needs answers of one shape, got {sorted(shapes)}")
        mean = np.mean(np.stack(arrays), axis=0)
        first = messages[0].get("data") or {}
        names = list(first.get("names") or []) if isinstance(first, dict) else []
        if isinstance(first, dict) and "tensor" in first:
            return {"data": {"names": names, "tensor": {"shape": list(mean.shape), "values": mean.ravel().tolist()}}}
        return {"data": {"names": names, "ndarray": mean.tolist()}}


class SimpleModel(Node):
    """Seldon's SIMPLE_MODEL (a stub for testing graphs): always three class scores."""

    async def transform(self, operation: str, message: Message) -> Message:
        return {"data": {"names": ["class0", "class1", "class2"],
                         "tensor": {"shape": [1, 3], "values": [0.1, 0.9, 0.5]}}}


# The remote paths of Seldon's API: predictions and feedback as its external API names them (the microservice
# wrapper and `inferd microservice` serve them too); the other calls as the microservice API names them.
_REMOTE_PATHS = {"predict": "/api/v1.0/predictions", "send-feedback": "/api/v1.0/feedback",
                 "transform-input": "/transform-input", "transform-output": "/transform-output", "route": "/route",
                 "aggregate": "/aggregate"}
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class RemoteNode(Node):
    """A node served elsewhere (Seldon's `endpoint` of type REST): Seldon's REST API on that host. The node's name
    goes along as the `Seldon-Model` header, so a second inferd serves it by its model of that name."""

    def __init__(self, name: str, host: str, port: int, timeout: float = REMOTE_TIMEOUT_S) -> None:
        self.name = name
        self.base = f"http://{host}:{port}"
        self.timeout = timeout

    def _post(self, path: str, body: bytes) -> tuple[int, bytes]:
        with outgoing_headers(f"remote {self.name}", self.base + path) as trace_headers:
            return self._send(path, body, trace_headers)

    def _send(self, path: str, body: bytes, trace_headers: dict[str, str]) -> tuple[int, bytes]:
        # trace_headers: the traced request's W3C traceparent / tracestate, passed on to the remote node.
        request = urllib.request.Request(self.base + path, data=body, method="POST", headers={
            "Content-Type": "application/json", "Seldon-Model": self.name, **trace_headers})
        try:
            with _NO_PROXY.open(request, timeout=self.timeout) as reply:
                return int(reply.status), reply.read()
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read()
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise InferError.unavailable(f"graph node '{self.name}': {self.base} cannot be reached: {reason}") \
                from None

    async def _call(self, operation: str, payload: Any) -> Message:
        body = json.dumps(payload, default=_json_default).encode("utf-8")
        status, raw = await asyncio.to_thread(self._post, _REMOTE_PATHS[operation], body)
        try:
            answer = json.loads(raw) if raw else {}
        except ValueError:
            answer = None
        if status >= 400:
            if not isinstance(answer, dict):
                text = raw.decode("utf-8", errors="replace")[:200]
                answer = SeldonError(f"graph node '{self.name}' answered {status}: {text}", status,
                                     "MICROSERVICE_INTERNAL_ERROR" if status >= 500 else "MICROSERVICE_BAD_DATA")
                answer = answer.to_dict()
            raise SeldonFailure(status, answer)
        if not isinstance(answer, dict):
            raise InferError.internal(f"graph node '{self.name}' answered no SeldonMessage")
        return answer

    async def transform(self, operation: str, message: Message) -> Message:
        return await self._call(operation, message)

    async def route(self, message: Message) -> Message:
        return await self._call("route", message)

    async def aggregate(self, messages: list[Message]) -> Message:
        return await self._call("aggregate", {"seldonMessages": messages})

    async def feedback(self, feedback: Message, branch: int | None) -> None:
        await self._call("send-feedback", feedback)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", errors="replace")
    return str(value)  # whatever else a class put in a message: as text, rather than fail the call


@dataclass(slots=True)
class Unit:
    """One node of the graph: its name, type, the methods it runs, how it is called and its children."""

    name: str
    type: str
    methods: frozenset[str]
    node: Node
    image: str
    children: list[Unit] = field(default_factory=list)


@dataclass(slots=True)
class _Walk:
    """What one request's walk through the graph gathers for the answer's meta."""

    puid: str
    tags: dict[str, Any]
    routing: dict[str, int] = field(default_factory=dict)
    path: dict[str, str] = field(default_factory=dict)
    metrics: list[Any] = field(default_factory=list)


def _bad(info: str) -> SeldonFailure:
    return SeldonFailure(400, SeldonError(info).to_dict())


class SeldonGraph:
    """One predictor's graph: `run` is its scheduler's graph (messages from Seldon's protocol, tensors from V2)."""

    def __init__(self, name: str, root: Unit) -> None:
        self.name = name
        self.root = root
        self._routings: OrderedDict[str, dict[str, int]] = OrderedDict()
        self._lock = threading.Lock()

    # ---- the graph as a model ----

    async def run(self, feeds: Tensors, job: Job) -> Tensors:
        carrier = feeds.get(MESSAGE_TENSOR)
        if carrier is None:
            return graph_outputs(await self.predict(tensors_message(feeds)))
        operation, message = carrier[0]
        answer = np.empty(1, dtype=np.object_)
        answer[0] = (200, await self._operation(operation, message))
        return {MESSAGE_TENSOR: answer}

    async def _operation(self, operation: str, message: Any) -> Message:
        if operation in ("predict", "transform-input", "transform-output"):
            return await self.predict(message)
        if operation == "send-feedback":
            return await self.send_feedback(message)
        if operation == "health-status":
            return {"data": {"names": [], "ndarray": ["healthy"]}, "meta": {}}
        if operation == "metadata":
            return {"name": self.name, "versions": ["1"], "platform": GRAPH_PLATFORM, "inputs": [], "outputs": [],
                    "custom": {}}
        raise SeldonFailure(404, SeldonError(f"a Seldon graph answers predictions and feedback, not "
                                             f"'{operation}'", 404).to_dict())

    # ---- predictions ----

    async def predict(self, message: Any) -> Message:
        if not isinstance(message, dict):
            raise _bad(f"Invalid request data type: {str(message)[:200]}")
        meta = message.get("meta")
        if meta is not None and not isinstance(meta, dict):
            raise _bad("'meta' must be a JSON object")
        meta = meta or {}
        given = meta.get("puid")
        puid: str = given if isinstance(given, str) and given else new_puid()
        tags = meta.get("tags")
        walk = _Walk(puid, dict(tags) if isinstance(tags, dict) else {})
        body = {k: v for k, v in message.items() if k != "meta"}
        answer = await self._predict(self.root, body, walk)
        self._remember(puid, walk.routing)
        answer["meta"] = {"puid": puid, "tags": walk.tags, "routing": walk.routing, "requestPath": walk.path,
                          "metrics": walk.metrics}
        return answer

    def _outgoing(self, message: Message, walk: _Walk) -> Message:
        return {**message, "meta": {"puid": walk.puid, "tags": dict(walk.tags)}}

    async def _step(self, unit: Unit, walk: _Walk, pending: Awaitable[Message]) -> Message:
        walk.path[unit.name] = unit.image
        answer = await pending
        if not isinstance(answer, dict):
            raise InferError.internal(f"graph node '{unit.name}' answered no SeldonMessage")
        meta = answer.get("meta")
        if isinstance(meta, dict):
            if isinstance(meta.get("tags"), dict):
                walk.tags.update(meta["tags"])
            if isinstance(meta.get("metrics"), list):
                walk.metrics.extend(meta["metrics"])
        return {k: v for k, v in answer.items() if k != "meta"}

    async def _predict(self, unit: Unit, message: Message, walk: _Walk) -> Message:
        if "TRANSFORM_INPUT" in unit.methods:
            operation = "predict" if unit.type == "MODEL" else "transform-input"
            message = await self._step(unit, walk, unit.node.transform(operation, self._outgoing(message, walk)))
        if unit.children:
            message = await self._children(unit, message, walk)
        if "TRANSFORM_OUTPUT" in unit.methods:
            message = await self._step(unit, walk, unit.node.transform("transform-output",
                                                                       self._outgoing(message, walk)))
        return message

    async def _children(self, unit: Unit, message: Message, walk: _Walk) -> Message:
        branch = -1
        if "ROUTE" in unit.methods:
            branch = _branch(await self._step(unit, walk, unit.node.route(self._outgoing(message, walk))), unit.name)
            if not -1 <= branch < len(unit.children):
                raise InferError.internal(f"router '{unit.name}' chose child {branch}, but it has "
                                          f"{len(unit.children)} (0 to {len(unit.children) - 1}, or -1 for all)")
            walk.routing[unit.name] = branch
        chosen = unit.children if branch == -1 else [unit.children[branch]]
        if len(chosen) == 1:
            answers = [await self._predict(chosen[0], message, walk)]
        else:
            answers = list(await asyncio.gather(*(self._predict(c, message, walk) for c in chosen)))
        if "AGGREGATE" in unit.methods:
            outgoing = [self._outgoing(a, walk) for a in answers]
            return await self._step(unit, walk, unit.node.aggregate(outgoing))
        return answers[0]

    # ---- feedback ----

    def _remember(self, puid: str, routing: dict[str, int]) -> None:
        if not routing:
            return
        with self._lock:
            self._routings[puid] = dict(routing)
            self._routings.move_to_end(puid)
            while len(self._routings) > REMEMBERED_ROUTINGS:
                self._routings.popitem(last=False)

    def routing_of(self, feedback: Message) -> dict[str, int]:
        """The routing a feedback is about: its response's `meta.routing`, else what was remembered by puid."""
        response = feedback.get("response")
        meta = response.get("meta") if isinstance(response, dict) else None
        if isinstance(meta, dict) and isinstance(meta.get("routing"), dict) and meta["routing"]:
            return {str(k): int(v) for k, v in meta["routing"].items() if isinstance(v, (int, float))}
        for holder in (response, feedback.get("request"), feedback):
            found = holder.get("meta") if isinstance(holder, dict) else None
            puid = found.get("puid") if isinstance(found, dict) else None
            if isinstance(puid, str):
                with self._lock:
                    remembered = self._routings.get(puid)
                if remembered is not None:
                    return dict(remembered)
        return {}

    async def send_feedback(self, feedback: Any) -> Message:
        if not isinstance(feedback, dict):
            raise _bad(f"Invalid request data type: {str(feedback)[:200]}")
        if feedback.get("reward") is not None and (isinstance(feedback["reward"], bool)
                                                   or not isinstance(feedback["reward"], (int, float))):
            raise _bad("'reward' must be a number")
        routing = self.routing_of(feedback)
        await self._feedback(self.root, feedback, routing)
        response = feedback.get("response")
        meta = response.get("meta") if isinstance(response, dict) else None
        puid = meta.get("puid") if isinstance(meta, dict) else None
        return {"data": {"names": [], "ndarray": []}, "meta": {"puid": puid or new_puid(), "routing": routing}}

    async def _feedback(self, unit: Unit, feedback: Message, routing: dict[str, int]) -> None:
        branch = routing.get(unit.name)
        if unit.children:
            valid = branch is not None and 0 <= branch < len(unit.children)
            chosen: Sequence[Unit] = [unit.children[branch]] if valid else unit.children  # type: ignore[index]
            await asyncio.gather(*(self._feedback(c, feedback, routing) for c in chosen))
        if "SEND_FEEDBACK" in unit.methods:
            await unit.node.feedback(feedback, branch)
