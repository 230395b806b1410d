"""A Seldon-style user class as a model of the core, so `inferd microservice` answers Seldon's protocol, V2 HTTP
and gRPC through the one pipeline (statistics, limits, traces and queueing as for any model).

Seldon's own routes reach `execute` as one message tensor (`MESSAGE_TENSOR`: the operation and the
SeldonMessage), answered by compat/seldon/protocol.py on the component's executor.

`inferd microservice` creates the user object once and registers it here under the model's name; this backend
serves that same object (never a second copy: `load()` may be expensive and the object may keep state), calling
the method its service type stands for: MODEL `predict`, TRANSFORMER `transform_input`, OUTPUT_TRANSFORMER
`transform_output`, ROUTER `route` (output: the child index as [[i]]), COMBINER `aggregate` (the rows of the input
along its first dimension are the messages combined).

V2 tensors: the inputs and outputs are those the class declares in Seldon's `init_metadata()` as V2 tensors
(`{"name", "datatype", "shape"}`); without them, one FP64 input `input` and one output `output`, both [-1, -1]
(a batch of feature rows, as Seldon's ndarray payloads usually are). The output's datatype is whatever the class
returns; strings, bytes and dicts (as JSON) come back as one BYTES element.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np

from ..compat.seldon import protocol
from ..compat.seldon.component import RuntimeResponse, SeldonComponent
from ..config import ConfigError, ModelConfig
from ..types import MESSAGE_TENSOR, V2_TO_CONFIG

__all__ = ["COMPONENT_PARAMETER", "SeldonBackend", "register_component", "unregister_component"]

log = logging.getLogger("inferd.seldon")

COMPONENT_PARAMETER = "seldon_component"  # config parameter naming the registered component

_METHODS = {"MODEL": "predict", "TRANSFORMER": "transform_input", "OUTPUT_TRANSFORMER": "transform_output",
            "ROUTER": "route", "COMBINER": "aggregate"}  # the `method` label of a V2 call's custom metrics
_COMPONENTS: dict[str, SeldonComponent] = {}
_LOCK = threading.Lock()


def register_component(key: str, component: SeldonComponent) -> None:
    with _LOCK:
        _COMPONENTS[key] = component


def unregister_component(key: str) -> None:
    with _LOCK:
        _COMPONENTS.pop(key, None)


def _component_of(config: ModelConfig) -> SeldonComponent:
    key = config.parameters[COMPONENT_PARAMETER].string_value if COMPONENT_PARAMETER in config.parameters else ""
    with _LOCK:
        component = _COMPONENTS.get(key)
    if component is None:
        raise ConfigError("a Seldon user class is served by `inferd microservice MODULE:CLASS`, not from a "
                          "model repository")
    return component


def _declared_tensors(metadata: dict[str, Any], key: str) -> list[tuple[str, str, list[int]]]:
    """V2 tensors (name, datatype, shape) from Seldon's init_metadata; entries of other kinds are skipped."""
    found = []
    for entry in metadata.get(key) or []:
        if (isinstance(entry, dict) and isinstance(entry.get("name"), str) and entry.get("datatype") in V2_TO_CONFIG
                and isinstance(entry.get("shape"), list) and entry["shape"]):
            found.append((entry["name"], entry["datatype"], [int(d) for d in entry["shape"]]))
    return found


class SeldonBackend:
    """Serves the registered component's service-type method to V2 requests (in-process, on its executor)."""

    releases_gil = True  # the user code runs on the component's own executor, not on the core's threads
    takes_messages = True  # Seldon's own protocol: whole SeldonMessages (see compat/seldon/protocol.py)

    def __init__(self) -> None:
        self._component: SeldonComponent | None = None
        self._output = "output"

    def autocomplete(self, config: ModelConfig, files: Path) -> ModelConfig:
        component = _component_of(config)
        metadata = component.init_metadata()
        if not config.input:
            for name, datatype, shape in _declared_tensors(metadata, "inputs") or [("input", "FP64", [-1, -1])]:
                tensor = config.input.add()
                tensor.name, tensor.data_type = name, V2_TO_CONFIG[datatype]
                tensor.dims.extend(shape)
        if not config.output:
            for name, datatype, shape in _declared_tensors(metadata, "outputs")[:1] or [("output", "FP64", [-1, -1])]:
                tensor = config.output.add()
                tensor.name, tensor.data_type = name, V2_TO_CONFIG[datatype]
                tensor.dims.extend(shape)
        return config

    def load(self, config: ModelConfig, files: Path, device: str) -> None:
        self._component = _component_of(config)
        self._component.load()
        self._output = config.output[0].name

    def execute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        component = self._component
        if component is None:
            raise RuntimeError("the Seldon component is not loaded")
        carrier = inputs.get(MESSAGE_TENSOR)
        if carrier is not None:  # a call of Seldon's API: (operation, SeldonMessage) -> (status, answer)
            operation, message = carrier[0]
            answer = np.empty(1, dtype=np.object_)
            answer[0] = component.run(protocol.answer, component, operation, message)
            return {MESSAGE_TENSOR: answer}
        features = {name: _features(array) for name, array in inputs.items()}
        x: Any = next(iter(features.values())) if len(features) == 1 else features
        response = component.run(self._call_and_record, component, x)
        return {self._output: _to_tensor(response.data)}

    @classmethod
    def _call_and_record(cls, component: SeldonComponent, x: Any) -> RuntimeResponse:
        """The call, then the class's custom metrics recorded for Prometheus as a Seldon route records them
        (a failing `metrics()` is logged: the V2 answer carries no metrics, so it need not fail)."""
        response = cls._call(component, x)
        try:
            component.metrics(response.metrics, _METHODS[component.service_type])
        except Exception:
            log.exception("the Seldon class's metrics() raised")
        return response

    @staticmethod
    def _call(component: SeldonComponent, x: Any) -> RuntimeResponse:
        kind = component.service_type
        if kind == "MODEL":
            return component.call_with_meta("predict", x, [], {}, list)
        if kind == "TRANSFORMER":
            return component.call_with_meta("transform_input", x, [], {}, lambda: x)
        if kind == "OUTPUT_TRANSFORMER":
            return component.call_with_meta("transform_output", x, [], {}, lambda: x)
        if kind == "ROUTER":
            response = component.call_with_meta("route", x, [], {}, lambda: -1)
            if not isinstance(response.data, (int, np.integer)):
                raise ValueError(f"Routing response must be int but got {response.data}")
            response.data = np.array([[int(response.data)]], dtype=np.int64)
            return response
        rows = list(x) if isinstance(x, np.ndarray) else [x]
        return component.aggregate(rows, [[] for _ in rows])

    def unload(self) -> None:
        self._component = None


def _features(array: np.ndarray) -> Any:
    """A V2 input as the class sees it: numbers as they are; BYTES as str (one element: the string itself)."""
    if array.dtype != np.object_:
        return array
    texts = [v.decode("utf-8", errors="replace") if isinstance(v, bytes) else str(v) for v in array.ravel()]
    if array.size == 1:
        return texts[0]
    return np.array(texts, dtype=object).reshape(array.shape)


def _to_tensor(value: Any) -> np.ndarray:
    if isinstance(value, dict):
        value = json.dumps(value, default=_json_default)
    if isinstance(value, str):
        value = value.encode("utf-8")
    if isinstance(value, (bytes, bytearray)):
        array = np.empty(1, dtype=np.object_)
        array[0] = bytes(value)
        return array
    array = np.asarray(value)
    if array.dtype.kind in "USO":
        flat = [v if isinstance(v, bytes) else str(v).encode("utf-8") for v in array.ravel()]
        out = np.empty(len(flat), dtype=np.object_)
        out[:] = flat
        return out.reshape(array.shape)
    return array


def _json_default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
