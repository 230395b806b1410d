"""What each node of a SeldonDeployment's graph is, decided and loaded as Seldon's operator and engine decide it.

In order, a node (`spec.predictors[].graph` and its `children`) is:
1. a built-in `implementation`: `RANDOM_ABTEST`, `SIMPLE_ROUTER`, `EPSILON_GREEDY`, `THOMPSON_SAMPLING` (routers.py),
   `AVERAGE_COMBINER`, `SIMPLE_MODEL`;
2. a prepackaged server, `implementation: SKLEARN_SERVER | XGBOOST_SERVER | TENSORFLOW_SERVER | MLFLOW_SERVER |
   TRITON_SERVER` with `modelUri` (a folder: a path relative to the deployment file, or any URI the model
   repository reads: file://, s3://, gs://, az://, https:// archives): the folder is loaded as a model of backend
   sklearn / xgboost / tensorflow / mlflow (the folder holds the model's files, as Seldon's servers take them), or,
   for TRITON_SERVER, the model of the node's name in that Triton repository;
3. a Python class in Seldon's wrapper style: a container named like the node in the predictor's `componentSpecs[]
   .spec.containers[]`, whose env `MODEL_NAME` names the class as seldon-core-microservice reads it (`Module.Class`,
   `module:Class`, or `Name` for class Name in Name.py), `SERVICE_TYPE` its type (default: the node's type), and
   `workingDir` the folder of its module (relative to the deployment file); the node's `parameters` (Seldon's
   [{name, value, type}] list, else the container's PREDICTIVE_UNIT_PARAMETERS) go to its constructor. The object
   is served as a model of backend `seldon` (its `load()` runs once, calls never overlap, as Seldon's default);
4. a remote endpoint: `endpoint: {service_host, service_port, type: REST}` (type GRPC is a load error: not
   supported);
5. otherwise the model of the node's name (loaded from the repository if it is not yet).

The models a deployment loads for its nodes are named `{graph}.{node}` ({graph}: the served graph's name).
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import sys
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..compat.seldon.component import (
    SERVICE_TYPES,
    SeldonComponent,
    import_interface,
    parse_parameters,
    split_interface,
)
from ..config import ConfigError, ModelConfig, read_config
from ..model import ServedModel
from ..types import InferError
from .routers import BUILTIN_ROUTERS, make_router
from .scheduler import InnerCalls
from .seldon_graph import AverageCombiner, Node, RemoteNode, RouterNode, ServedNode, SimpleModel, Unit

__all__ = ["NodeModels", "build_units"]

_BUILDS = itertools.count(1)
PREPACKAGED = {"SKLEARN_SERVER": "sklearn", "XGBOOST_SERVER": "xgboost", "TENSORFLOW_SERVER": "tensorflow",
               "MLFLOW_SERVER": "mlflow", "TRITON_SERVER": ""}
_BUILTIN_TYPES = {**dict.fromkeys(BUILTIN_ROUTERS, "ROUTER"), "AVERAGE_COMBINER": "COMBINER",
                  "SIMPLE_MODEL": "MODEL"}
_METHODS = {"MODEL": {"TRANSFORM_INPUT", "SEND_FEEDBACK"}, "TRANSFORMER": {"TRANSFORM_INPUT"},
            "OUTPUT_TRANSFORMER": {"TRANSFORM_OUTPUT"}, "ROUTER": {"ROUTE", "SEND_FEEDBACK"},
            "COMBINER": {"AGGREGATE"}}
_ALL_METHODS = frozenset({"TRANSFORM_INPUT", "TRANSFORM_OUTPUT", "ROUTE", "AGGREGATE", "SEND_FEEDBACK"})


class Manager(Protocol):
    """What building a graph needs of the model manager."""

    inner: InnerCalls | None

    def get(self, name: str, version: str = "") -> ServedModel: ...

    def load(self, name: str, config: ModelConfig | None = None, files: Any = None) -> None: ...

    def load_folder(self, name: str, folder: Path, config: ModelConfig | None = None) -> None: ...

    def unload(self, name: str) -> None: ...


@dataclass
class NodeModels:
    """What a deployment's nodes hold on to: the models loaded for them, and what to undo when it goes."""

    models: list[str] = field(default_factory=list)
    cleanups: list[Callable[[], None]] = field(default_factory=list)

    def release(self, manager: Manager, keep: set[str] | frozenset[str] = frozenset()) -> None:
        """Unload the models loaded for the nodes (but those in `keep`) and undo the rest."""
        for name in self.models:
            if name in keep:
                continue
            try:
                manager.unload(name)
            except InferError:
                pass
        for cleanup in self.cleanups:
            cleanup()
        self.models.clear()
        self.cleanups.clear()


class _Builder:
    def __init__(self, manager: Manager, graph: str, base: Path, containers: dict[str, dict[str, Any]],
                 held: NodeModels) -> None:
        self.manager = manager
        self.graph = graph
        self.base = base
        self.containers = containers
        self.held = held
        self.names: set[str] = set()

    def unit(self, spec: Any, where: str) -> Unit:
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not spec["name"]:
            raise ValueError(f"{where}: a graph node needs a 'name'")
        name = spec["name"]
        if name in self.names:
            raise ValueError(f"{where}: node name '{name}' appears twice in the graph")
        self.names.add(name)
        children_specs = spec.get("children") or []
        if not isinstance(children_specs, list):
            raise ValueError(f"node '{name}': 'children' must be a list")
        children = [self.unit(child, f"node '{name}'") for child in children_specs]
        implementation = spec.get("implementation") or ""
        if implementation == "UNKNOWN_IMPLEMENTATION":
            implementation = ""
        kind, node, image = self._node(name, spec, implementation, len(children))
        methods = self._methods(name, spec, kind)
        if methods & {"ROUTE", "AGGREGATE"} and not children:
            raise ValueError(f"node '{name}' of type {kind} needs children")
        return Unit(name, kind, methods, node, image, children)

    def _type(self, name: str, spec: dict[str, Any], implied: str = "") -> str:
        kind = spec.get("type") or implied or "MODEL"
        if kind not in SERVICE_TYPES:
            raise ValueError(f"node '{name}': type must be one of {', '.join(SERVICE_TYPES)}, got '{kind}'")
        return str(kind)

    def _methods(self, name: str, spec: dict[str, Any], kind: str) -> frozenset[str]:
        declared = spec.get("methods")
        if declared is None:
            return frozenset(_METHODS[kind])
        if not isinstance(declared, list) or not set(declared) <= _ALL_METHODS:
            raise ValueError(f"node '{name}': 'methods' must list some of {', '.join(sorted(_ALL_METHODS))}")
        return frozenset(declared)

    def _node(self, name: str, spec: dict[str, Any], implementation: str, children: int) -> tuple[str, Node, str]:
        parameters = self._parameters(name, spec.get("parameters"), None)
        if implementation in _BUILTIN_TYPES:
            kind = self._type(name, spec, _BUILTIN_TYPES[implementation])
            if implementation in BUILTIN_ROUTERS:
                try:
                    return kind, RouterNode(make_router(implementation, parameters, children)), implementation
                except ValueError as exc:
                    raise ValueError(f"node '{name}': {exc}") from None
            if implementation == "AVERAGE_COMBINER":
                return kind, AverageCombiner(), implementation
            return kind, SimpleModel(), implementation
        if implementation in PREPACKAGED:
            model = self._prepackaged(name, spec, implementation)
            return self._type(name, spec), ServedNode(self.manager, model), implementation
        if implementation:
            raise ValueError(f"node '{name}': unknown implementation '{implementation}' (known: "
                             f"{', '.join([*_BUILTIN_TYPES, *PREPACKAGED])})")
        container = self.containers.get(name)
        if container is not None:
            return self._python_class(name, spec, container)
        endpoint = spec.get("endpoint")
        if isinstance(endpoint, dict) and endpoint.get("service_host"):
            where = f"{endpoint['service_host']}:{endpoint.get('service_port')}"
            return self._type(name, spec), self._remote(name, endpoint), where
        self._repository_model(name)
        return self._type(name, spec), ServedNode(self.manager, name), name

    def _parameters(self, name: str, given: Any, fallback: str | None) -> dict[str, Any]:
        if given is None and fallback:
            text = fallback
        else:
            text = json.dumps(given or [])
        try:
            return parse_parameters(text)
        except ValueError as exc:
            raise ValueError(f"node '{name}': {exc}") from None

    def _remote(self, name: str, endpoint: dict[str, Any]) -> Node:
        kind = str(endpoint.get("type") or "REST").upper()
        if kind == "GRPC":
            raise ValueError(f"node '{name}': endpoint type GRPC is not supported (use type REST: Seldon's REST "
                             "API on that host)")
        if kind != "REST":
            raise ValueError(f"node '{name}': endpoint type must be REST or GRPC, got '{kind}'")
        try:
            port = int(endpoint.get("service_port") or 0)
        except (TypeError, ValueError):
            port = 0
        if not 0 < port < 65536:
            raise ValueError(f"node '{name}': endpoint service_port must be a port number, got "
                             f"{endpoint.get('service_port')!r}")
        return RemoteNode(name, str(endpoint["service_host"]), port)

    def _repository_model(self, name: str) -> None:
        try:
            self.manager.get(name)
            return
        except InferError:
            pass
        try:  # a model of the repository not loaded yet (explicit mode): load it, as an ensemble's steps are
            self.manager.load(name)
        except InferError as exc:
            raise ValueError(f"node '{name}' names no Python class (no container '{name}' in componentSpecs), "
                             f"no implementation and no endpoint, and no model '{name}' is served: "
                             f"{exc.message}") from None

    # ---- models loaded for nodes ----

    def _model_name(self, node: str) -> str:
        return f"{self.graph}.{node}"

    def _load(self, model: str, folder: Path, config: ModelConfig | None = None) -> str:
        try:
            self.manager.load_folder(model, folder, config)
        except InferError as exc:
            raise ValueError(exc.message) from None
        self.held.models.append(model)
        return model

    def _folder(self, model: str) -> Path:
        import shutil

        base = Path(tempfile.mkdtemp(prefix="inferd-graph-"))
        self.held.cleanups.append(lambda: shutil.rmtree(base, ignore_errors=True))
        folder = base / model
        folder.mkdir()
        return folder

    def _prepackaged(self, name: str, spec: dict[str, Any], implementation: str) -> str:
        uri = spec.get("modelUri")
        if not isinstance(uri, str) or not uri:
            raise ValueError(f"node '{name}': implementation {implementation} needs a 'modelUri'")
        path = self._local(name, uri)
        model = self._model_name(name)
        if implementation == "TRITON_SERVER":
            if not (path / name).is_dir():
                raise ValueError(f"node '{name}': the Triton repository of modelUri '{uri}' has no model '{name}'")
            try:
                config = read_config(path / name)  # named as the node's model here, not as in its repository
            except ConfigError as exc:
                raise ValueError(f"node '{name}': {exc}") from None
            if config is not None:
                config.name = model
            return self._load(model, path / name, config)
        backend = PREPACKAGED[implementation]
        folder = self._folder(model)
        (folder / "config.pbtxt").write_text(f'backend: "{backend}"\n')
        if backend == "tensorflow":  # a SavedModel folder, or TF Serving's numbered versions of one
            versions = sorted((p for p in path.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
            (folder / "1").mkdir()
            (folder / "1" / "model.savedmodel").symlink_to(versions[-1] if versions else path,
                                                           target_is_directory=True)
        else:
            (folder / "1").symlink_to(path, target_is_directory=True)
        return self._load(model, folder)

    def _local(self, name: str, uri: str) -> Path:
        from ..repository import RemoteRepository, is_remote

        if is_remote(uri):
            try:
                return RemoteRepository(uri).sync()
            except Exception as exc:  # a store that cannot be read, a missing filesystem package
                raise ValueError(f"node '{name}': modelUri '{uri}' cannot be read: {exc}") from None
        path = Path(uri).expanduser()
        path = path if path.is_absolute() else self.base / path
        if not path.is_dir():
            raise ValueError(f"node '{name}': modelUri '{uri}' is not a folder")
        return path

    def _python_class(self, name: str, spec: dict[str, Any], container: dict[str, Any]) -> tuple[str, Node, str]:
        env = {e.get("name"): str(e.get("value", "")) for e in container.get("env") or [] if isinstance(e, dict)}
        interface = env.get("MODEL_NAME", "")
        if not interface:
            raise ValueError(f"node '{name}': container '{name}' has no env MODEL_NAME naming its class")
        kind = self._type(name, spec, env.get("SERVICE_TYPE", ""))
        service_type = env.get("SERVICE_TYPE") or kind
        if service_type not in SERVICE_TYPES:
            raise ValueError(f"node '{name}': SERVICE_TYPE must be one of {', '.join(SERVICE_TYPES)}")
        working = Path(str(container.get("workingDir") or "."))
        working = working if working.is_absolute() else self.base / working
        if not working.is_dir():
            raise ValueError(f"node '{name}': workingDir '{container.get('workingDir')}' is not a folder")
        parameters = self._parameters(name, spec.get("parameters"), env.get("PREDICTIVE_UNIT_PARAMETERS"))
        try:
            user_class, class_name = _import_class(working, interface)
            user = user_class(**parameters)
        except Exception as exc:  # the user's module failed to import, or its constructor raised
            raise ValueError(f"node '{name}': cannot create class '{interface}': {type(exc).__name__}: {exc}") \
                from None
        from ..backends.seldon import COMPONENT_PARAMETER, register_component, unregister_component

        model = self._model_name(name)
        component = SeldonComponent(user, class_name, service_type)
        key = f"{model}#{next(_BUILDS)}"  # a rebuilt graph's class never takes the place of the one serving
        register_component(key, component)

        def forget() -> None:
            unregister_component(key)
            component.close()

        self.held.cleanups.append(forget)
        folder = self._folder(model)
        (folder / "1").mkdir()
        (folder / "config.pbtxt").write_text(
            f'backend: "seldon"\nmax_batch_size: 0\ninstance_group [{{ count: 1 kind: KIND_CPU }}]\n'
            f'parameters {{ key: "{COMPONENT_PARAMETER}" value {{ string_value: "{key}" }} }}\n')
        self._load(model, folder)
        return kind, ServedNode(self.manager, model), str(container.get("image") or interface)


def _import_class(working: Path, interface: str) -> tuple[type, str]:
    """The class MODEL_NAME names, from its module in `working` (which also goes on sys.path, for the module's own
    imports); a module not found there is imported as an installed one."""
    module_name, class_name = split_interface(interface)
    source = working / (module_name.replace(".", os.sep) + ".py")
    if not source.is_file():
        return import_interface(interface)
    if str(working) not in sys.path:
        sys.path.append(str(working))
    unique = f"inferd_seldon_{zlib.crc32(str(source.resolve()).encode()):08x}_{module_name.replace('.', '_')}"
    module = sys.modules.get(unique)
    if module is None:
        loader_spec = importlib.util.spec_from_file_location(unique, source)
        if loader_spec is None or loader_spec.loader is None:
            raise ImportError(f"cannot import {source.name}")
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[unique] = module
        try:
            loader_spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(unique, None)
            raise
    user_class = getattr(module, class_name, None)
    if not isinstance(user_class, type):
        raise ValueError(f"module '{module_name}' has no class '{class_name}'")
    return user_class, class_name


def build_units(manager: Manager, graph: str, predictor: dict[str, Any], base: Path, held: NodeModels) -> Unit:
    """The root unit of one predictor's graph, its node models loaded (recorded in `held`); ValueError with the
    reason when the graph cannot be served."""
    containers: dict[str, dict[str, Any]] = {}
    for component in predictor.get("componentSpecs") or []:
        spec = component.get("spec") if isinstance(component, dict) else None
        for container in (spec or {}).get("containers") or []:
            if isinstance(container, dict) and isinstance(container.get("name"), str):
                containers[container["name"]] = container
    _check_names(predictor.get("graph"), "the graph", set())  # before any node's model loads
    return _Builder(manager, graph, base, containers, held).unit(predictor.get("graph"), "the graph")


def _check_names(spec: Any, where: str, names: set[str]) -> None:
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not spec["name"]:
        raise ValueError(f"{where}: a graph node needs a 'name'")
    name = spec["name"]
    if name in names:
        raise ValueError(f"{where}: node name '{name}' appears twice in the graph (Seldon's node names are unique)")
    names.add(name)
    children = spec.get("children") or []
    if not isinstance(children, list):
        raise ValueError(f"node '{name}': 'children' must be a list")
    for child in children:
        _check_names(child, f"node '{name}'", names)
