"""KServe's InferenceGraph (serving.kserve.io/v1alpha1) served as a model of its name, answering as KServe's router
(cmd/router) answers.

The resource is checked against KServe's schema (spec.nodes: each node a `routerType` of Sequence, Switch,
Ensemble or Splitter and its `steps`; the step fields and their types; unknown fields refused) and KServe's
webhook rules (a `root` node; a step names one of serviceName / nodeName / serviceUrl; nodeName names a node of
the graph, without cycles; a Splitter's weights add up to 100; `data` is `$request` or `$response`; conditions are
GJSON paths of the subset gjson.py reads).

KServe's router passes JSON bodies; so does this graph. The request document is the request as V2 inference
request JSON (`{"id", "parameters", "inputs": [{name, datatype, shape, data}]}`; the parameters of the
client's own wire, binary data and shared memory, left out), whatever protocol it came in by
(a Seldon message's `jsonData`, when it is an object, is taken as the document as it is — a V2 or V1 body). A
step calls:
- `serviceName`: the served model of that name, through the one pipeline: the document's `inputs` (or, for a
  previous step's `$response`, its `outputs`; or, for an Ensemble's answer, every step's outputs) become the
  request's tensors, cast to the model's datatypes; a model of one input takes a document of one tensor whatever
  its name. The answer is the V2 response JSON (`{"model_name", "model_version", "id", "outputs"}`);
- `nodeName`: another node of the graph, with the same document;
- `serviceUrl`: an HTTP URL that gets the document as a JSON POST and answers JSON (KServe's own way).

Routers, as KServe's:
- Sequence: the steps in order; a step with `data: $response` gets the previous step's answer, else the request;
  a step whose `condition` does not hold on the previous answer (on the request, for the first step) ends the
  sequence with that answer; a failing step with `dependency: Hard` fails the graph, a Soft one (the default)
  passes its error (`{"error": ...}`) on as its answer, and fails the graph only when it is the last step;
- Switch: the first step whose condition holds on the request (a step without condition always holds); none:
  404 "None of the routes matched with the switch condition";
- Ensemble: every step at once on the request; the answer is `{step name (or its index): answer}`; a failing
  Hard step fails the graph, a Soft one answers `{"error": ...}` under its name;
- Splitter: one step, drawn by `weight` (percent).

The graph's answer over V2 (and V1): a V2 response document's outputs as they are; an Ensemble's `{step: answer}`
as the outputs of each named `{step}.{output}`. Over Seldon's protocol: the answer document as `jsonData`.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..config import ModelConfig
from ..model import ServedModel
from ..scheduling import Job
from ..types import MESSAGE_TENSOR, InferenceRequest, InferError, Tensors, numpy_dtype
from .gjson import GjsonPath, compile_path
from .graph_model import REQUEST_TENSOR, GraphModel, graph_model, node_parameters
from .scheduler import GRAPH_PROTOCOL, InnerCalls

__all__ = ["GRAPH_PLATFORM", "InferenceGraph", "build_inference_graph", "check_inference_graph"]

GRAPH_PLATFORM = "inference_graph"
NO_ROUTE = "None of the routes matched with the switch condition"
ROUTER_TYPES = ("Sequence", "Splitter", "Ensemble", "Switch")
_STEP_FIELDS = {"condition": str, "data": str, "dependency": str, "mapPredictionsToInstances": bool, "name": str,
                "nodeName": str, "serviceName": str, "serviceUrl": str, "weight": int}
_SPEC_FIELDS = ("affinity", "maxReplicas", "minReplicas", "nodeName", "nodeSelector", "nodes", "resources",
                "routerTimeouts", "scaleMetric", "scaleTarget", "serviceAccountName", "timeout", "tolerations")
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))
URL_TIMEOUT_S = 60.0

Document = dict[str, Any]
# Request parameters about how the client's own wire carried the call (binary tensors, shared memory), not part
# of the document the steps get.
_WIRE_PARAMETERS = frozenset({"binary_data_output", "binary_data", "binary_data_size", "shared_memory_region",
                              "shared_memory_offset", "shared_memory_byte_size"})


def _context() -> Any:
    from ..pipeline.call import RequestContext

    return RequestContext(GRAPH_PROTOCOL)


_CONTEXT = _context()


@dataclass(frozen=True, slots=True)
class Step:
    name: str
    service: str
    node: str
    url: str
    data: str
    condition: GjsonPath | None
    hard: bool
    weight: int


@dataclass(frozen=True, slots=True)
class GraphNode:
    name: str
    router: str
    steps: tuple[Step, ...]


# ---- the resource, checked ----

def _check_step(node: str, index: int, step: Any) -> Step:
    where = f"node '{node}' step {index}"
    if not isinstance(step, dict):
        raise ValueError(f"{where} must be an object")
    for key, value in step.items():
        kind = _STEP_FIELDS.get(key)
        if kind is None:
            raise ValueError(f"{where}: unknown field '{key}' (known: {', '.join(_STEP_FIELDS)})")
        if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError(f"{where}: '{key}' must be an integer")
        if kind is not int and not isinstance(value, kind):
            raise ValueError(f"{where}: '{key}' must be a {kind.__name__}")
    targets = [k for k in ("serviceName", "nodeName", "serviceUrl") if step.get(k)]
    if len(targets) != 1:
        raise ValueError(f"{where} must name exactly one of serviceName, nodeName or serviceUrl")
    data = step.get("data", "")
    if data not in ("", "$request", "$response"):
        raise ValueError(f"{where}: data must be $request or $response, got '{data}'")
    dependency = step.get("dependency", "Soft")
    if dependency not in ("Soft", "Hard"):
        raise ValueError(f"{where}: dependency must be Soft or Hard, got '{dependency}'")
    condition = None
    if step.get("condition"):
        try:
            condition = compile_path(step["condition"])
        except ValueError as exc:
            raise ValueError(f"{where}: condition: {exc}") from None
    return Step(step.get("name") or "", step.get("serviceName", ""), step.get("nodeName", ""),
                step.get("serviceUrl", ""), data, condition, dependency == "Hard", int(step.get("weight", 0)))


def _check_node(name: str, spec: Any) -> GraphNode:
    if not isinstance(spec, dict):
        raise ValueError(f"node '{name}' must be an object")
    unknown = set(spec) - {"routerType", "steps"}
    if unknown:
        raise ValueError(f"node '{name}': unknown field(s) {', '.join(sorted(unknown))}")
    router = spec.get("routerType")
    if router not in ROUTER_TYPES:
        raise ValueError(f"node '{name}': routerType must be one of {', '.join(ROUTER_TYPES)}, got {router!r}")
    steps_spec = spec.get("steps") or []
    if not isinstance(steps_spec, list):
        raise ValueError(f"node '{name}': steps must be a list")
    steps = tuple(_check_step(name, i, s) for i, s in enumerate(steps_spec))
    if not steps:
        raise ValueError(f"node '{name}' has no steps")
    if router == "Splitter":
        if any(s.weight <= 0 for s in steps):
            raise ValueError(f"node '{name}': every step of a Splitter needs a positive weight")
        if sum(s.weight for s in steps) != 100:
            raise ValueError(f"node '{name}': the weights of a Splitter's steps must add up to 100, "
                             f"they add up to {sum(s.weight for s in steps)}")
    return GraphNode(name, router, steps)


def check_inference_graph(doc: Any) -> tuple[str, dict[str, GraphNode]]:
    """The graph's name and nodes, checked as KServe's schema and webhook check them; ValueError otherwise."""
    if not isinstance(doc, dict) or doc.get("kind") != "InferenceGraph":
        raise ValueError("not a KServe InferenceGraph (kind: InferenceGraph)")
    api = doc.get("apiVersion", "")
    if api and api != "serving.kserve.io/v1alpha1":
        raise ValueError(f"apiVersion must be serving.kserve.io/v1alpha1, got '{api}'")
    metadata = doc.get("metadata")
    name = metadata.get("name") if isinstance(metadata, dict) else None
    if not isinstance(name, str) or not name:
        raise ValueError("metadata.name is required")
    spec = doc.get("spec")
    if not isinstance(spec, dict) or not isinstance(spec.get("nodes"), dict):
        raise ValueError(f"InferenceGraph '{name}': spec.nodes is required")
    unknown = set(spec) - set(_SPEC_FIELDS)
    if unknown:
        raise ValueError(f"InferenceGraph '{name}': unknown field(s) in spec: {', '.join(sorted(unknown))}")
    nodes = {node: _check_node(node, value) for node, value in spec["nodes"].items()}
    if "root" not in nodes:
        raise ValueError(f"InferenceGraph '{name}': there is no 'root' node")
    for node in nodes.values():
        for step in node.steps:
            if step.node and step.node not in nodes:
                raise ValueError(f"node '{node.name}': step names node '{step.node}', which the graph lacks")
    _check_cycles(nodes, "root", [])
    return name, nodes


def _check_cycles(nodes: Mapping[str, GraphNode], name: str, path: list[str]) -> None:
    if name in path:
        raise ValueError(f"the graph's nodes form a cycle: {' -> '.join([*path, name])}")
    for step in nodes[name].steps:
        if step.node:
            _check_cycles(nodes, step.node, [*path, name])


# ---- documents and tensors ----

def _text(value: Any) -> Any:
    return value.decode("utf-8", errors="replace") if isinstance(value, (bytes, bytearray)) else value


def _tensor_json(name: str, datatype: str, array: np.ndarray) -> Document:
    flat = array.ravel()
    data = [_text(v) for v in flat.tolist()] if array.dtype == np.object_ else flat.tolist()
    return {"name": name, "datatype": datatype, "shape": list(array.shape), "data": data}


def request_document(feeds: Tensors, request: Mapping[str, Any]) -> Document:
    datatypes = request.get("datatypes") or {}
    doc: Document = {"inputs": [_tensor_json(name, datatypes.get(name) or _datatype(array), array)
                                for name, array in feeds.items()]}
    if request.get("id"):
        doc["id"] = request["id"]
    parameters = {k: v for k, v in (request.get("parameters") or {}).items() if k not in _WIRE_PARAMETERS}
    if parameters:
        doc["parameters"] = parameters
    return doc


def _datatype(array: np.ndarray) -> str:
    from ..types import datatype_of

    return datatype_of(array)


def _array(tensor: Any, where: str) -> tuple[str, np.ndarray]:
    if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
        raise InferError.invalid(f"{where}: a tensor needs a 'name'")
    datatype = tensor.get("datatype", "FP64")
    data = tensor.get("data", [])
    try:
        if datatype == "BYTES":
            flat = [v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in np.ravel(np.asarray(data,
                                                                                                       dtype=object))]
            array = np.empty(len(flat), dtype=np.object_)
            array[:] = flat
        else:
            array = np.asarray(data, dtype=numpy_dtype(datatype))
        shape = tensor.get("shape")
        return tensor["name"], array.reshape(shape) if isinstance(shape, list) else array
    except (TypeError, ValueError) as exc:
        raise InferError.invalid(f"{where}: tensor '{tensor['name']}' cannot be read: {exc}") from None


def document_tensors(doc: Any, where: str) -> dict[str, np.ndarray]:
    """The tensors a document holds: a request's inputs, a response's outputs, or each step's outputs of an
    Ensemble's answer."""
    if not isinstance(doc, dict):
        raise InferError.invalid(f"{where}: the document is not a JSON object")
    if set(doc) == {"error"}:
        raise InferError.invalid(f"{where}: the step before it failed: {doc['error']}")
    for key in ("inputs", "outputs"):
        if isinstance(doc.get(key), list):
            return dict(_array(t, where) for t in doc[key])
    if "instances" in doc:
        return {"instances": np.asarray(doc["instances"])}
    found: dict[str, np.ndarray] = {}
    for value in doc.values():
        if isinstance(value, dict) and "error" not in value:
            found.update(document_tensors(value, where))
    if not found:
        raise InferError.invalid(f"{where}: the document has no inputs, outputs or instances")
    return found


def answer_tensors(doc: Any, prefix: str = "") -> Tensors:
    """The graph's answer as V2 outputs: a response's outputs; an Ensemble's, each named `{step}.{output}`."""
    if isinstance(doc, dict) and isinstance(doc.get("outputs"), list):
        return {prefix + name: array for name, array in (_array(t, "the graph's answer") for t in doc["outputs"])}
    if isinstance(doc, dict) and "error" not in doc:
        found: Tensors = {}
        for step, value in doc.items():
            found.update(answer_tensors(value, f"{prefix}{step}."))
        return found
    return {}


def _cast(model: ServedModel, tensors: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    if len(model.inputs) == 1 and len(tensors) == 1:
        only = next(iter(model.inputs))
        tensors = {only: next(iter(tensors.values()))}
    inputs, datatypes = {}, {}
    for name, array in tensors.items():
        spec = model.inputs.get(name)
        if spec is None:
            raise InferError.invalid(f"unexpected inference input '{name}' for model '{model.name}' "
                                     f"(its inputs are {', '.join(model.inputs)})")
        if spec.datatype != "BYTES" and array.dtype != numpy_dtype(spec.datatype):
            try:
                array = array.astype(numpy_dtype(spec.datatype))
            except (TypeError, ValueError) as exc:
                raise InferError.invalid(f"input '{name}' of model '{model.name}' takes {spec.datatype}: {exc}") \
                    from None
        inputs[name], datatypes[name] = array, spec.datatype
    return inputs, datatypes


# ---- the router ----

class _StepFailed(Exception):
    def __init__(self, error: InferError) -> None:
        super().__init__(error.message)
        self.error = error


class InferenceGraph:
    """One InferenceGraph's router; `run` is its scheduler's graph."""

    def __init__(self, name: str, nodes: dict[str, GraphNode], models: Any, seed: int | None = None) -> None:
        self.name = name
        self.nodes = nodes
        self._models = models  # the model manager: `get` and the pipeline (`inner`)
        self._random = random.Random(seed)
        self._lock = threading.Lock()

    async def run(self, feeds: Tensors, job: Job) -> Tensors:
        carrier = feeds.get(MESSAGE_TENSOR)
        if carrier is not None:
            operation, message = carrier[0]
            answer = np.empty(1, dtype=np.object_)
            answer[0] = (200, {"jsonData": await self.route(self._message_document(operation, message))})
            return {MESSAGE_TENSOR: answer}
        feeds = dict(feeds)
        request = feeds.pop(REQUEST_TENSOR, None)
        doc = request_document(feeds, request[0] if request is not None else {})
        return answer_tensors(await self.route(doc))

    def _message_document(self, operation: str, message: Any) -> Document:
        from ..compat.seldon.protocol import SeldonError, SeldonFailure, extract

        if operation != "predict":
            raise SeldonFailure(404, SeldonError(f"an InferenceGraph answers predictions, not '{operation}'",
                                                 404).to_dict())
        if isinstance(message, dict) and isinstance(message.get("jsonData"), dict):
            return dict(message["jsonData"])
        try:
            features, _, _ = extract(message)
        except SeldonError as exc:
            raise SeldonFailure(400, exc.to_dict()) from None
        array = np.asarray(features)
        datatype = "BYTES" if array.dtype.kind in "OSU" else _datatype(array)
        if datatype == "BYTES":
            array = np.asarray([str(v) for v in array.ravel()], dtype=object).reshape(array.shape)
        return {"inputs": [_tensor_json("input", datatype, array)]}

    async def route(self, doc: Document) -> Document:
        return await self._node(self.nodes["root"], doc)

    async def _node(self, node: GraphNode, doc: Document) -> Any:
        if node.router == "Sequence":
            return await self._sequence(node, doc)
        if node.router == "Switch":
            for step in node.steps:
                if step.condition is None or step.condition.exists(doc):
                    return await self._step(step, doc)
            raise InferError.not_found(NO_ROUTE)
        if node.router == "Splitter":
            return await self._step(self._pick(node.steps), doc)
        return await self._ensemble(node, doc)

    def _pick(self, steps: tuple[Step, ...]) -> Step:
        with self._lock:
            number = self._random.randrange(100)
        for step in steps:
            if number < step.weight:
                return step
            number -= step.weight
        return steps[-1]

    async def _sequence(self, node: GraphNode, doc: Document) -> Any:
        response: Any = None
        for i, step in enumerate(node.steps):
            request = response if step.data == "$response" and i > 0 else doc
            if step.condition is not None and not step.condition.exists(response if i > 0 else doc):
                return response if i > 0 else doc
            last = i == len(node.steps) - 1
            try:
                response = await self._attempt(step, request, raise_soft=last)
            except _StepFailed as failed:
                raise failed.error from None
        return response

    async def _ensemble(self, node: GraphNode, doc: Document) -> Document:
        names = [step.name or str(i) for i, step in enumerate(node.steps)]
        results = await asyncio.gather(*(self._attempt(s, doc, raise_soft=False) for s in node.steps),
                                       return_exceptions=True)
        answer: Document = {}
        for name, result in zip(names, results, strict=True):
            if isinstance(result, _StepFailed):
                raise result.error
            if isinstance(result, BaseException):
                raise result
            answer[name] = result
        return answer

    async def _attempt(self, step: Step, doc: Any, raise_soft: bool) -> Any:
        """A step's answer; a Soft step's failure is its error document unless `raise_soft`."""
        try:
            return await self._step(step, doc)
        except InferError as exc:
            if step.hard or raise_soft:
                raise _StepFailed(exc) from None
            return {"error": exc.message}

    async def _step(self, step: Step, doc: Any) -> Any:
        if step.node:
            return await self._node(self.nodes[step.node], doc)
        if step.url:
            return await asyncio.to_thread(_post_json, step.url, doc)
        return await self._call_model(step.service, doc)

    async def _call_model(self, name: str, doc: Any) -> Document:
        model = self._models.get(name)
        inputs, datatypes = _cast(model, document_tensors(doc, f"step '{name}'"))
        inner: InnerCalls | None = self._models.inner
        if inner is None:
            raise InferError.unavailable("graphs are not served by this model manager")
        request_id = doc.get("id", "") if isinstance(doc, dict) else ""
        request = InferenceRequest(name, inputs, datatypes, id=str(request_id or ""), parameters=node_parameters())
        response = await inner.infer_request(request, _CONTEXT)
        outputs = [_tensor_json(n, model.outputs[n].datatype if n in model.outputs else _datatype(a), a)
                   for n, a in response.outputs.items()]
        answer: Document = {"model_name": response.model_name, "model_version": response.model_version,
                            "outputs": outputs}
        if response.id:
            answer["id"] = response.id
        return answer


def _post_json(url: str, doc: Any) -> Any:
    body = json.dumps(doc, default=_json_value).encode("utf-8")
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    try:
        with _NO_PROXY.open(request, timeout=URL_TIMEOUT_S) as reply:
            raw = reply.read()
    except urllib.error.HTTPError as exc:
        text = exc.read().decode("utf-8", errors="replace")[:300]
        raise InferError.internal(f"{url} answered {exc.code}: {text}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise InferError.unavailable(f"{url} cannot be reached: {getattr(exc, 'reason', exc)}") from None
    try:
        return json.loads(raw)
    except ValueError:
        raise InferError.internal(f"{url} answered no JSON") from None


def _entry_model(nodes: Mapping[str, GraphNode], models: Any) -> ServedModel | None:
    """The model the graph's first step calls (following nodeName), if it is one."""
    node = nodes["root"]
    for _ in range(len(nodes) + 1):
        step = node.steps[0]
        if step.service:
            try:
                return models.get(step.service)
            except InferError:
                return None
        if not step.node:
            return None
        node = nodes[step.node]
    return None


def build_inference_graph(doc: Any, models: Any, seed: int | None = None) -> GraphModel:
    """The InferenceGraph as a served model; ValueError with the reason when it cannot be served (its models are
    checked now: each serviceName must be served)."""
    name, nodes = check_inference_graph(doc)
    for node in nodes.values():
        for step in node.steps:
            if step.service:
                try:
                    models.get(step.service)
                except InferError:
                    try:
                        models.load(step.service)
                    except InferError as exc:
                        raise ValueError(f"node '{node.name}': serviceName '{step.service}' is not served: "
                                         f"{exc.message}") from None
    graph = InferenceGraph(name, nodes, models, seed)
    config = ModelConfig()
    entry = _entry_model(nodes, models)
    if entry is not None:
        config.input.extend(entry.config.input)
        config.max_batch_size = entry.config.max_batch_size
    return graph_model(name, config, GRAPH_PLATFORM, graph.run, takes_messages=True, wants_request=True)


def _json_value(value: Any) -> Any:
    """What JSON lacks in a document (a gRPC request's bytes parameter): as text."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, np.generic):
        return value.item()
    return str(value)
