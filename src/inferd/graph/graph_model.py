"""A Seldon graph or a KServe InferenceGraph served as a model of its own name.

Unlike an ensemble, such a graph has no fixed tensors of its own: what a request gives passes on to the graph's
first nodes, which check it against their own configurations, and the answer holds whatever the node that
answered last produced. The graph's config still declares the inputs of its entry where they are known (for
metadata and for V1's unnamed instances) and one `output`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any

import numpy as np

from ..config import ModelConfig
from ..model import ServedModel
from ..observability import ModelStatistics
from ..scheduling import Job
from ..types import MESSAGE_TENSOR, InferenceRequest, InferError, Tensors
from .scheduler import GraphScheduler

__all__ = ["REQUEST_TENSOR", "GraphModel", "graph_model", "node_parameters"]

# The one-element object tensor by which a graph that asks for it (`wants_request`) gets the request's id and
# parameters next to its tensors (a KServe InferenceGraph's conditions read the request's parameters).
REQUEST_TENSOR = "__request__"


# The priority of the request a graph is running for: its nodes' requests get it too (as an ensemble's steps do).
_PRIORITY: ContextVar[int] = ContextVar("inferd_graph_priority", default=0)


def node_parameters() -> dict[str, Any]:
    """The parameters of a node's request: the graph request's priority, when it has one."""
    priority = _PRIORITY.get()
    return {"priority": priority} if priority else {}


class GraphModel(ServedModel):
    """A served graph: open inputs (its nodes check them), outputs as the graph answers them."""

    wants_request = False

    def check_inputs(self, request: InferenceRequest) -> tuple[Tensors, int]:
        given = dict(request.inputs)
        for reserved in (MESSAGE_TENSOR, REQUEST_TENSOR):
            if reserved in given:
                raise InferError.invalid(f"unexpected inference input '{reserved}' for model '{self.name}'")
        rows = next((a.shape[0] for a in given.values() if a.ndim > 0), 1)
        if self.wants_request:
            carrier = np.empty(1, dtype=np.object_)
            carrier[0] = {"id": request.id, "parameters": dict(request.parameters),
                          "datatypes": dict(request.datatypes)}
            given[REQUEST_TENSOR] = carrier
        return given, max(int(rows), 1)

    def check_outputs(self, request: InferenceRequest) -> list[str]:
        return [out.name for out in request.outputs] if request.outputs else []

    def shape_outputs(self, results: Tensors, names: list[str], batch: int) -> Tensors:
        if not names:
            return dict(results)
        missing = [n for n in names if n not in results]
        if missing:
            raise InferError.invalid(f"unexpected inference output '{missing[0]}' for model '{self.name}' "
                                     f"(this request's answer has {', '.join(results) or 'no outputs'})")
        return {n: results[n] for n in names}


def graph_model(name: str, config: ModelConfig, platform: str,
                run: Callable[[Tensors, Job], Awaitable[Tensors]], takes_messages: bool,
                wants_request: bool = False) -> GraphModel:
    """The graph as a served model, version 1, with statistics of its own."""
    config.name = name
    config.platform = platform

    async def run_with_priority(feeds: Tensors, job: Job) -> Tensors:
        token = _PRIORITY.set(job.priority)  # seen by the nodes' requests (and tasks started for them)
        try:
            return await run(feeds, job)
        finally:
            _PRIORITY.reset(token)

    stats = ModelStatistics(name, "1")
    served = GraphModel(name, 1, config, platform, GraphScheduler(name, run_with_priority, stats), stats)
    served.takes_messages = takes_messages
    served.wants_request = wants_request
    served.partial_outputs = True
    return served
