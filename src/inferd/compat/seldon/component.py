"""A Seldon Core 1.x language-wrapper user class, loaded and called the way `seldon-core-microservice` calls it.

The user's class needs nothing from `seldon_core`: every optional method (`load`, `tags`, `metrics`,
`class_names`, `feature_names`, `transform_input`, `route`, ...) is looked up by name, and a class that subclasses
Seldon's `SeldonComponent` (whose unimplemented methods raise `SeldonNotImplementedError`) is recognised by the
exception's class name, so it runs whether or not `seldon_core` is installed.

User code runs in this process, as in Seldon, on a small executor of its own: `--threads 1` (Seldon's default)
means calls never overlap, so classes that are not thread-safe stay correct, whichever protocol the call came in.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ...observability.custom_metrics import CustomMetrics, valid_metrics

__all__ = [
    "SERVICE_TYPES",
    "NotImplementedBySeldonClass",
    "RuntimeResponse",
    "SeldonComponent",
    "import_interface",
    "parse_parameters",
]

SERVICE_TYPES = ("MODEL", "TRANSFORMER", "OUTPUT_TRANSFORMER", "ROUTER", "COMBINER")
_PARAMETER_TYPES: dict[str, Callable[[str], Any]] = {"INT": int, "FLOAT": float, "DOUBLE": float, "STRING": str}


class NotImplementedBySeldonClass(Exception):
    """The user class does not implement the method asked for (Seldon then falls back, or answers 400)."""


class RuntimeResponse:
    """What a user method returned, split as Seldon's `SeldonResponse` is: the data, runtime tags and metrics."""

    __slots__ = ("data", "metrics", "tags")

    def __init__(self, data: Any, tags: dict[str, Any] | None = None, metrics: list[Any] | None = None) -> None:
        self.data = data
        self.tags = tags or {}
        self.metrics = metrics or []

    @classmethod
    def of(cls, value: Any) -> RuntimeResponse:
        # seldon_core.user_model.SeldonResponse, recognised by shape so seldon_core need not be installed.
        if type(value).__name__ == "SeldonResponse" and hasattr(value, "data"):
            return cls(value.data, getattr(value, "tags", None), getattr(value, "metrics", None))
        return cls(value)


def _is_seldon_not_implemented(exc: BaseException) -> bool:
    return any(k.__name__ == "SeldonNotImplementedError" for k in type(exc).__mro__)


def parse_parameters(text: str) -> dict[str, Any]:
    """Seldon's `--parameters` / PREDICTIVE_UNIT_PARAMETERS: a JSON list of {name, value, type} -> keyword args."""
    try:
        items = json.loads(text or "[]")
    except ValueError as exc:
        raise ValueError(f"--parameters is not valid JSON: {exc}") from None
    if not isinstance(items, list):
        raise ValueError("--parameters must be a JSON list of {\"name\", \"value\", \"type\"} objects")
    parsed: dict[str, Any] = {}
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise ValueError(f"bad parameter {item!r}: each needs a string 'name', a 'value' and a 'type'")
        name, value, kind = item["name"], item.get("value"), item.get("type", "STRING")
        if kind == "BOOL":
            text_value = str(value).strip().lower()
            if text_value not in ("1", "0", "true", "false", "yes", "no", "y", "n", "t", "f", "on", "off"):
                raise ValueError(f"Bad model parameter: {name} with value {value} can't be parsed as a BOOL")
            parsed[name] = text_value in ("1", "true", "yes", "y", "t", "on")
            continue
        convert = _PARAMETER_TYPES.get(kind)
        if convert is None:
            raise ValueError(f"Bad model parameter type: {kind} valid are INT, FLOAT, DOUBLE, STRING, BOOL")
        try:
            parsed[name] = convert(value)  # type: ignore[arg-type]  # a bad value is the error below
        except (TypeError, ValueError):
            raise ValueError(f"Bad model parameter: {name} with value {value} can't be parsed as a {kind}") from None
    return parsed


def split_interface(interface: str) -> tuple[str, str]:
    """(module, class) of `MODULE:CLASS`, Seldon's `MODULE.CLASS`, or Seldon's `NAME` (a module NAME holding a
    class NAME)."""
    if ":" in interface:
        module_name, _, class_name = interface.partition(":")
    elif "." in interface:
        module_name, _, class_name = interface.rpartition(".")
    else:
        module_name = class_name = interface
    if not module_name or not class_name:
        raise ValueError(f"interface '{interface}' must be MODULE:CLASS, MODULE.CLASS or NAME")
    return module_name, class_name


def import_interface(interface: str) -> tuple[type, str]:
    """The user class and its name, from `MODULE:CLASS`, Seldon's `MODULE.CLASS`, or Seldon's `NAME` (a module
    NAME holding a class NAME). The module is imported from the current directory first, then PYTHONPATH."""
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    module_name, class_name = split_interface(interface)
    module = importlib.import_module(module_name)
    user_class = getattr(module, class_name, None)
    if not isinstance(user_class, type):
        raise ValueError(f"module '{module_name}' ({getattr(module, '__file__', '?')}) has no class '{class_name}'")
    return user_class, class_name


def _accepts_meta(method: Callable[..., Any]) -> bool | None:
    """Whether `method` takes Seldon's `meta` argument (the 3-argument form); None when it cannot be told."""
    try:
        params = inspect.signature(method).parameters.values()
    except (TypeError, ValueError):
        return None
    positional = 0
    for p in params:
        if p.kind == p.VAR_KEYWORD or (p.name == "meta" and p.kind != p.POSITIONAL_ONLY):
            return True
        if p.kind == p.VAR_POSITIONAL:
            return True
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            positional += 1
    return positional >= 3


class SeldonComponent:
    """One user object, its optional methods, and the executor its code runs on."""

    def __init__(self, user_object: Any, name: str, service_type: str = "MODEL", threads: int = 1) -> None:
        if service_type not in SERVICE_TYPES:
            raise ValueError(f"service type must be one of {', '.join(SERVICE_TYPES)}, got '{service_type}'")
        self.user = user_object
        self.name = name
        self.service_type = service_type
        self.executor = ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix=f"seldon-{name}")
        self._loaded = threading.Event()
        # Custom metrics for Prometheus; `inferd microservice` sets the model_name label to the V2 model name.
        self.custom_metrics = CustomMetrics({"model_name": name.lower(), "worker_id": str(os.getpid())})

    @classmethod
    def create(cls, interface: str, parameters: dict[str, Any], service_type: str = "MODEL",
               threads: int = 1) -> SeldonComponent:
        user_class, class_name = import_interface(interface)
        return cls(user_class(**parameters), class_name, service_type, threads)

    # ---- lifecycle ----

    def load(self) -> None:
        """Call the user's `load()` once (Seldon calls it after the server starts, before serving)."""
        if self._loaded.is_set():
            return
        load = getattr(self.user, "load", None)
        if callable(load):
            self.run(load)
        self._loaded.set()

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)

    def run(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run user code on the component's executor and wait (from a thread that is not the executor's)."""
        return self.executor.submit(func, *args, **kwargs).result()

    def has(self, method: str) -> bool:
        return callable(getattr(self.user, method, None))

    # ---- the optional extras, each as Seldon falls back when the class lacks it ----

    def _optional(self, method: str) -> Any:
        func = getattr(self.user, method, None)
        if not callable(func):
            raise NotImplementedBySeldonClass(method)
        try:
            return func()
        except Exception as exc:
            if _is_seldon_not_implemented(exc):
                raise NotImplementedBySeldonClass(method) from None
            raise

    def tags(self) -> dict[str, Any]:
        try:
            tags = self._optional("tags")
        except NotImplementedBySeldonClass:
            return {}
        return dict(tags) if tags else {}

    def metrics(self, runtime: list[Any] | None = None, method: str = "predict") -> list[dict[str, Any]]:
        """The class's `metrics()` plus a response's runtime metrics, recorded for Prometheus under `method`.

        Entries that are not valid Seldon metrics are logged once and dropped (Seldon answers 500 for them;
        here a bad metric never fails the request). An exception raised by `metrics()` itself propagates."""
        try:
            found = self._optional("metrics")
        except NotImplementedBySeldonClass:
            found = None
        combined = [*(found if isinstance(found, (list, tuple)) else valid_metrics(found)),
                    *(runtime if isinstance(runtime, (list, tuple)) else valid_metrics(runtime))]
        return self.custom_metrics.record(combined, method)

    def class_names(self, ndim: int, columns: int) -> list[str]:
        """Names of a response's columns: the class's `class_names` (method or attribute), else t:0, t:1, ..."""
        if ndim < 2:
            return []
        attr = getattr(self.user, "class_names", None)
        if attr is not None:
            if callable(attr):
                try:
                    return list(self._optional("class_names"))
                except NotImplementedBySeldonClass:
                    pass
            else:
                return list(attr)
        return [f"t:{i}" for i in range(columns)]

    def feature_names(self, original: list[str]) -> list[str]:
        try:
            return list(self._optional("feature_names"))
        except NotImplementedBySeldonClass:
            return original

    def health_status(self) -> Any:
        if not self.has("health_status"):
            return "healthy"
        try:
            return self._optional("health_status")
        except NotImplementedBySeldonClass:
            return "not implemented - assuming healthy"

    def init_metadata(self) -> dict[str, Any]:
        try:
            found = self._optional("init_metadata")
        except NotImplementedBySeldonClass:
            return {}
        return found if isinstance(found, dict) else {}

    # ---- the methods of the Seldon API ----

    def raw(self, method: str, message: Any) -> Any:
        """`predict_raw` and friends: the whole message in, a whole message out; NotImplemented... if absent."""
        func = getattr(self.user, f"{method}_raw", None)
        if not callable(func):
            raise NotImplementedBySeldonClass(f"{method}_raw")
        try:
            return func(message)
        except Exception as exc:
            if _is_seldon_not_implemented(exc):
                raise NotImplementedBySeldonClass(f"{method}_raw") from None
            raise

    def call_with_meta(self, method: str, features: Any, names: list[str], meta: dict[str, Any] | None,
                       default: Callable[[], Any]) -> RuntimeResponse:
        """`predict` / `transform_input` / `transform_output` / `route`: with `meta` when the method takes it
        (the 3-argument form), else the older `(X, features_names)`; `default()` when the class lacks it."""
        func = getattr(self.user, method, None)
        if not callable(func):
            return RuntimeResponse.of(default())
        try:
            takes_meta = _accepts_meta(func)
            if takes_meta is None:  # a builtin or C callable: Seldon's own try-then-fall-back
                try:
                    value = func(features, names, meta=meta)
                except TypeError:
                    value = func(features, names)
            elif takes_meta:
                value = func(features, names, meta=meta)
            else:
                value = func(features, names)
        except Exception as exc:
            if _is_seldon_not_implemented(exc):
                return RuntimeResponse.of(default())
            raise
        return RuntimeResponse.of(value)

    def aggregate(self, features_list: list[Any], names_list: list[list[str]]) -> RuntimeResponse:
        func = getattr(self.user, "aggregate", None)
        if not callable(func):
            raise NotImplementedBySeldonClass("Aggregate not defined")
        return RuntimeResponse.of(func(features_list, names_list))

    def send_feedback(self, features: Any, names: list[str], reward: float, truth: Any,
                      routing: int | None) -> RuntimeResponse:
        func = getattr(self.user, "send_feedback", None)
        if not callable(func):
            return RuntimeResponse(None)
        try:
            return RuntimeResponse.of(func(features, names, reward, truth, routing=routing))
        except Exception as exc:
            if _is_seldon_not_implemented(exc):
                return RuntimeResponse(None)
            raise

