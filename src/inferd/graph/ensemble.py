"""Triton ensembles: `platform: "ensemble"` with `ensemble_scheduling { step [...] }`, checked when loaded and run
as a graph whose steps are requests of the one pipeline (each through its model's own scheduler).

A step runs as soon as its inputs exist; independent steps run at the same time. Beyond Triton, a step may carry
a condition (the ensemble's `parameters`, key `step.<model>.when` or `step.<n>.when` with n the step's place in the
list from 0; value `TENSOR OP VALUE`, OP one of == != > >= < <=, VALUE a number or a quoted string; it holds when
it holds for every element of the tensor). A step whose condition fails, or whose input is absent, is skipped: its
outputs are absent, the steps that need them are skipped too, and an ensemble output that no step produced is
left out of the answer. An ensemble input marked `optional: true` that the request omits is absent from the start.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..config import ConfigError, ModelConfig
from ..model import ServedModel, TensorSpec
from ..scheduling import Job
from ..types import InferenceRequest, InferError, RequestedOutput, Tensors, datatype_of
from .scheduler import GRAPH_PROTOCOL, InnerCalls

__all__ = ["ENSEMBLE_PLATFORM", "Condition", "EnsemblePlan", "EnsembleStep", "composing_models", "is_ensemble",
           "plan_ensemble"]

ENSEMBLE_PLATFORM = "ensemble"


def is_ensemble(config: ModelConfig) -> bool:
    return config.platform == ENSEMBLE_PLATFORM or config.backend == ENSEMBLE_PLATFORM


def composing_models(config: ModelConfig) -> list[str]:
    """The models an ensemble's steps name, in order, each once."""
    return list(dict.fromkeys(step.model_name for step in config.ensemble_scheduling.step))


_CONDITION = re.compile(r"""^\s*(?P<tensor>[^\s=!<>]+)\s*(?P<op>==|!=|>=|<=|>|<)\s*(?P<value>.+?)\s*$""")
_OPS: dict[str, Callable[[Any, Any], Any]] = {
    "==": np.equal, "!=": np.not_equal, ">": np.greater, ">=": np.greater_equal, "<": np.less, "<=": np.less_equal,
}


@dataclass(frozen=True, slots=True)
class Condition:
    """`TENSOR OP VALUE` over an ensemble tensor: true when it holds for every element."""

    tensor: str
    op: str
    value: float | bytes
    text: str

    @classmethod
    def parse(cls, text: str) -> Condition:
        match = _CONDITION.match(text)
        if match is None:
            raise ConfigError(f"condition '{text}' is not of the form 'TENSOR OP VALUE' (OP: == != > >= < <=)")
        raw = match["value"]
        value: float | bytes
        if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "\"'":
            value = raw[1:-1].encode()
            if match["op"] not in ("==", "!="):
                raise ConfigError(f"condition '{text}': a string compares with == or != only")
        else:
            try:
                value = float(raw)
            except ValueError:
                raise ConfigError(f"condition '{text}': '{raw}' is neither a number nor a quoted string") from None
        return cls(match["tensor"], match["op"], value, text.strip())

    def holds(self, array: np.ndarray) -> bool:
        if array.size == 0:
            return False
        value = self.value
        if isinstance(value, bytes):
            if array.dtype != np.object_ and array.dtype.kind not in "SU":
                raise InferError.invalid(f"condition '{self.text}': tensor '{self.tensor}' is not a string tensor")
            items = [v.encode() if isinstance(v, str) else bytes(v) for v in array.flat]
            equal = all(item == value for item in items)
            return equal if self.op == "==" else all(item != value for item in items)
        if array.dtype == np.object_ or array.dtype.kind in "SU":
            raise InferError.invalid(f"condition '{self.text}': tensor '{self.tensor}' is a string tensor, "
                                     "compared with a number")
        return bool(np.all(_OPS[self.op](array, value)))


@dataclass(frozen=True, slots=True)
class EnsembleStep:
    index: int
    model_name: str
    version: str  # "" for the newest ready version (Triton's -1)
    inputs: tuple[tuple[str, str], ...]  # (model input, ensemble tensor)
    outputs: tuple[tuple[str, str], ...]  # (model output, ensemble tensor)
    optional_inputs: frozenset[str]  # the model's inputs it may run without
    condition: Condition | None
    needs: frozenset[str]  # the ensemble tensors it waits for (inputs and the condition's)

    @property
    def label(self) -> str:
        return f"step {self.index} (model '{self.model_name}')"


@dataclass(frozen=True, slots=True)
class EnsemblePlan:
    name: str
    steps: tuple[EnsembleStep, ...]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]

    def runner(self, inner: Callable[[], InnerCalls | None]) -> Callable[[Tensors, Job], Any]:
        """The graph's `run` for GraphScheduler: `inner()` is how steps reach their models (the server)."""

        async def run(feeds: Tensors, job: Job) -> Tensors:
            calls = inner()
            if calls is None:
                raise InferError.unavailable(f"ensemble '{self.name}' is not attached to a server")
            return await _execute(self, calls, feeds, job)

        return run


def plan_ensemble(name: str, config: ModelConfig, lookup: Callable[[str, str], ServedModel]) -> EnsemblePlan:
    """Check an ensemble against its (loaded) composing models, as Triton does when it loads one; raises
    ConfigError with a one-line reason."""
    scheduling = config.ensemble_scheduling
    if not scheduling.step:
        raise ConfigError(f"ensemble '{name}' has no ensemble_scheduling steps")
    conditions = _conditions(config)
    batching = config.max_batch_size > 0
    # Every ensemble tensor's producer: ('input', spec) for the ensemble's inputs, (step label, spec) for steps.
    producers: dict[str, tuple[str, TensorSpec, bool]] = {}
    for tensor in config.input:
        producers[tensor.name] = (f"ensemble input '{tensor.name}'", _spec(tensor), batching)
    steps: list[EnsembleStep] = []
    consumers: list[tuple[str, str, TensorSpec, bool]] = []  # (tensor, who, spec, batched)
    used_conditions: set[str] = set()
    for index, step in enumerate(scheduling.step):
        version = "" if step.model_version in (-1, 0) else str(step.model_version)
        where = f"ensemble '{name}' step {index} (model '{step.model_name}')"
        if step.model_name == name:
            raise ConfigError(f"{where}: an ensemble cannot contain itself")
        try:
            model = lookup(step.model_name, version)
        except InferError as exc:
            raise ConfigError(f"{where}: the model is not available: {exc.message}") from None
        model_batching = model.max_batch_size > 0
        if batching and not model_batching:
            raise ConfigError(f"{where}: the ensemble allows a batch size of {config.max_batch_size}, but the model "
                              "does not support batching (max_batch_size 0)")
        if batching and model.max_batch_size < config.max_batch_size:
            raise ConfigError(f"{where}: the ensemble allows a batch size of {config.max_batch_size}, but the model "
                              f"only {model.max_batch_size}")
        inputs = []
        for model_input, tensor in step.input_map.items():
            wanted = model.inputs.get(model_input)
            if wanted is None:
                raise ConfigError(f"{where}: input_map names input '{model_input}', which the model does not have "
                                  f"(its inputs: {', '.join(model.inputs)})")
            inputs.append((model_input, tensor))
            consumers.append((tensor, where + f" input '{model_input}'", wanted, model_batching))
        unmapped = [n for n, s in model.inputs.items() if not s.optional and n not in step.input_map]
        if unmapped:
            raise ConfigError(f"{where}: the model's input '{unmapped[0]}' is not mapped (input_map)")
        outputs = []
        for model_output, tensor in step.output_map.items():
            made = model.outputs.get(model_output)
            if made is None:
                raise ConfigError(f"{where}: output_map names output '{model_output}', which the model does not "
                                  f"have (its outputs: {', '.join(model.outputs)})")
            if tensor in producers:
                raise ConfigError(f"{where}: ensemble tensor '{tensor}' is produced twice (also by "
                                  f"{producers[tensor][0]})")
            producers[tensor] = (where + f" output '{model_output}'", made, model_batching)
            outputs.append((model_output, tensor))
        condition = None
        for key in (f"step.{index}.when", f"step.{step.model_name}.when"):
            if key in conditions:
                condition = conditions[key]
                used_conditions.add(key)
        needs = {tensor for _, tensor in inputs}
        if condition is not None:
            needs.add(condition.tensor)
        optional = frozenset(n for n, s in model.inputs.items() if s.optional)
        steps.append(EnsembleStep(index, step.model_name, version, tuple(inputs), tuple(outputs), optional,
                                  condition, frozenset(needs)))
    unknown = sorted(set(conditions) - used_conditions)
    if unknown:
        raise ConfigError(f"ensemble '{name}': parameter '{unknown[0]}' names no step (use step.<model>.when or "
                          "step.<n>.when, n from 0)")
    for tensor in config.output:
        consumers.append((tensor.name, f"ensemble '{name}' output '{tensor.name}'", _spec(tensor), batching))
    for tensor, who, spec, batched in consumers:
        found = producers.get(tensor)
        if found is None:
            raise ConfigError(f"{who}: ensemble tensor '{tensor}' is produced by no step and is not an ensemble "
                              "input")
        _check_match(tensor, found, (who, spec, batched))
    for step in steps:
        if step.condition is not None and step.condition.tensor not in producers:
            raise ConfigError(f"ensemble '{name}' {step.label}: its condition's tensor '{step.condition.tensor}' is "
                              "produced by no step and is not an ensemble input")
    _check_acyclic(name, steps)
    return EnsemblePlan(name, tuple(steps), tuple(t.name for t in config.input), tuple(t.name for t in config.output))


def _spec(tensor: Any) -> TensorSpec:
    from ..config import v2_datatype

    return TensorSpec(tensor.name, v2_datatype(tensor.data_type), tuple(tensor.dims),
                      tuple(tensor.reshape.shape) if tensor.HasField("reshape") else None,
                      bool(getattr(tensor, "optional", False)))


def _conditions(config: ModelConfig) -> dict[str, Condition]:
    found = {}
    for key, value in config.parameters.items():
        if key.startswith("step.") and key.endswith(".when"):
            found[key] = Condition.parse(value.string_value)
    return found


def _check_match(tensor: str, producer: tuple[str, TensorSpec, bool], consumer: tuple[str, TensorSpec, bool]) -> None:
    made_by, made, made_batched = producer
    used_by, used, used_batched = consumer
    if made.datatype != used.datatype:
        raise ConfigError(f"{used_by}: ensemble tensor '{tensor}' is {used.datatype} there but {made.datatype} from "
                          f"{made_by}")
    if made.reshape is not None or used.reshape is not None:
        return  # reshaped tensors: the models check their own shapes at run time
    made_dims = (-1, *made.dims) if made_batched else made.dims
    used_dims = (-1, *used.dims) if used_batched else used.dims
    compatible = len(made_dims) == len(used_dims) and all(
        a == b or a == -1 or b == -1 for a, b in zip(made_dims, used_dims, strict=True))
    if not compatible:
        raise ConfigError(f"{used_by}: ensemble tensor '{tensor}' has shape {_fmt(used_dims)} there but "
                          f"{_fmt(made_dims)} from {made_by}")


def _fmt(dims: tuple[int, ...]) -> str:
    return "[" + ",".join(str(d) for d in dims) + "]"


def _check_acyclic(name: str, steps: list[EnsembleStep]) -> None:
    made_by = {tensor: step.index for step in steps for _, tensor in step.outputs}
    state: dict[int, int] = {}  # 1: on the path, 2: done
    by_index = {step.index: step for step in steps}

    def visit(index: int, path: list[int]) -> None:
        state[index] = 1
        for tensor in sorted(by_index[index].needs):
            before = made_by.get(tensor)
            if before is None:
                continue
            if state.get(before) == 1:
                cycle = [*path[path.index(before):], index, before] if before in path else [index, before]
                names = " -> ".join(f"step {i} ('{by_index[i].model_name}')" for i in cycle)
                raise ConfigError(f"ensemble '{name}' has a cycle: {names}")
            if before not in state:
                visit(before, [*path, index])
        state[index] = 2

    for step in steps:
        if step.index not in state:
            visit(step.index, [])


# ---- running ----

_ABSENT: Any = object()


async def _execute(plan: EnsemblePlan, calls: InnerCalls, feeds: Tensors, job: Job) -> Tensors:
    tensors: dict[str, Any] = dict(feeds)
    for name in plan.inputs:
        if name not in tensors:
            tensors[name] = _ABSENT  # an optional input the request left out
    waiting = list(plan.steps)
    running: dict[asyncio.Task[Mapping[str, np.ndarray]], EnsembleStep] = {}
    try:
        while waiting or running:
            ready = [s for s in waiting if all(t in tensors for t in s.needs)]
            launch = []
            for step in ready:
                waiting.remove(step)
                if _skipped(step, tensors):
                    for _, tensor in step.outputs:
                        tensors[tensor] = _ABSENT
                else:
                    launch.append(step)
            if ready and not launch and waiting:
                continue  # skipped steps may have settled what others wait for
            if len(launch) == 1 and not running:
                # Nothing else can start before this step ends (a chain): no task needed.
                _settle(launch[0], await _call(plan, calls, launch[0], tensors, job), tensors)
                continue
            for step in launch:
                running[asyncio.ensure_future(_call(plan, calls, step, tensors, job))] = step
            if not running:
                if waiting:  # nothing runs and nothing can start: the plan was checked, so this cannot happen
                    raise InferError.internal(f"ensemble '{plan.name}' cannot make progress")
                break
            done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                step = running.pop(task)
                _settle(step, task.result(), tensors)
    finally:
        for task in running:
            task.cancel()
    return {name: tensors[name] for name in plan.outputs if tensors.get(name, _ABSENT) is not _ABSENT}


def _skipped(step: EnsembleStep, tensors: Mapping[str, Any]) -> bool:
    for model_input, tensor in step.inputs:
        if tensors[tensor] is _ABSENT and model_input not in step.optional_inputs:
            return True
    condition = step.condition
    if condition is not None:
        value = tensors[condition.tensor]
        if value is _ABSENT or not condition.holds(value):
            return True
    return False


async def _call(plan: EnsemblePlan, calls: InnerCalls, step: EnsembleStep, tensors: Mapping[str, Any],
                job: Job) -> Mapping[str, np.ndarray]:
    inputs = {}
    datatypes = {}
    for model_input, tensor in step.inputs:
        value = tensors[tensor]
        if value is not _ABSENT:
            inputs[model_input] = value
            datatypes[model_input] = datatype_of(value)
    parameters: dict[str, Any] = {"priority": job.priority} if job.priority else {}
    request = InferenceRequest(step.model_name, inputs, datatypes, step.version, "",
                               [RequestedOutput(name) for name, _ in step.outputs], parameters)
    response = await calls.infer_request(request, _CONTEXT)
    return response.outputs


def _settle(step: EnsembleStep, outputs: Mapping[str, np.ndarray], tensors: dict[str, Any]) -> None:
    for model_output, tensor in step.outputs:
        tensors[tensor] = outputs.get(model_output, _ABSENT)


def _context() -> Any:
    from ..pipeline.call import RequestContext

    return RequestContext(GRAPH_PROTOCOL)


_CONTEXT = _context()
