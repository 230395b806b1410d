"""Graphs of models served as one model: Triton ensembles, Seldon inference graphs, KServe InferenceGraphs.

A graph is a `ServedModel` whose scheduler (`GraphScheduler`) runs its nodes instead of model instances; each node
that is a model is a request of the one pipeline (`InnerCalls`, protocol "graph"), so every composing model keeps
its own scheduler (dynamic batching), statistics and traces.
"""

from .scheduler import GraphPool, GraphScheduler, InnerCalls

__all__ = ["GraphPool", "GraphScheduler", "InnerCalls"]
