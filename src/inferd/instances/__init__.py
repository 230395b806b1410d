"""Where executions run: instance processes with shared-memory tensors, per-model Python environments, and the
model-to-model calls (BLS) a Python model makes from its instance process.

Scheduling policy (which request runs when, batched with which) is `scheduling`'s; this package only runs what it is
handed. It imports no backend: an instance process imports its backend class by the registry's "module:Class" target,
so backend adapters (and `triton_python_backend_utils`, whose BLS calls go through `bls`) may import from here.
"""

from .bls import BlsHandler, BlsRequest, Tensors, call_model
from .environments import EnvironmentBuildError, EnvironmentCache, PythonEnvironment, find_requirements
from .process import SHM_PREFIX, InstanceProcessError, ProcessInstance

__all__ = ["SHM_PREFIX", "BlsHandler", "BlsRequest", "EnvironmentBuildError", "EnvironmentCache",
           "InstanceProcessError", "ProcessInstance", "PythonEnvironment", "Tensors", "call_model",
           "find_requirements"]
