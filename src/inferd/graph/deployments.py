"""Deployment files: SeldonDeployments and KServe InferenceGraphs, served as models once the models have loaded.

Read from each local model repository's `deployments/` folder (its `*.yaml`, `*.yml` and `*.json` files, in name
order) and from `inferd serve --deployment FILE` (repeatable). A file holds one resource or several (YAML
documents separated by `---`, or a `kind: List` with `items`); resources of other kinds are skipped with a log
line. A resource that cannot be served leaves its graph UNAVAILABLE in the repository index, with the reason.
`load_files` again (the server's poll) rebuilds the graphs of the files that changed and unloads those of the files
that are gone.

Names:
- a SeldonDeployment with one predictor is served as the model `{metadata.name}`;
- with several, each predictor is served as `{metadata.name}-{predictor name}`, and `{metadata.name}` serves the
  predictor with the largest `traffic` (the first of them on a tie; shadows never). `Deployments.predictors`
  lists them with their traffic and shadow flags, for a traffic split between them;
- an InferenceGraph is served as `{metadata.name}`;
- models loaded for a Seldon graph's nodes (Python classes, prepackaged servers) as `{graph}.{node}`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import DataType, ModelConfig
from ..repository.local import DEPLOYMENT_SUFFIXES, deployment_files
from ..types import InferError
from .graph_model import GraphModel, graph_model
from .inference_graph import build_inference_graph
from .seldon_graph import GRAPH_PLATFORM, SeldonGraph, ServedNode, Unit
from .seldon_nodes import Manager, NodeModels, build_units

__all__ = ["DEPLOYMENT_SUFFIXES", "Deployments", "SeldonPredictor", "deployment_files", "read_resources"]

log = logging.getLogger("inferd.graph")


@dataclass(slots=True)
class SeldonPredictor:
    """One predictor of a SeldonDeployment, as served."""

    deployment: str
    predictor: str
    served_as: str
    traffic: int
    shadow: bool
    graph: SeldonGraph


def read_resources(path: Path) -> list[Any]:
    """The resources a file holds (ValueError when it cannot be read)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read deployment file {path.name}: {exc}") from None
    import yaml  # only where a deployment file is read

    try:
        docs = [json.loads(text)] if path.suffix == ".json" else list(yaml.safe_load_all(text))
    except (ValueError, yaml.YAMLError) as exc:
        raise ValueError(f"deployment file {path.name} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: "
                         f"{' '.join(str(exc).split())}") from None
    resources: list[Any] = []
    for doc in docs:
        if isinstance(doc, dict) and doc.get("kind") == "List" and isinstance(doc.get("items"), list):
            resources.extend(doc["items"])
        elif doc is not None:
            resources.append(doc)
    return resources


def _name_of(resource: Any) -> str:
    metadata = resource.get("metadata") if isinstance(resource, dict) else None
    name = metadata.get("name") if isinstance(metadata, dict) else None
    return name if isinstance(name, str) else ""


class Deployments:
    """The graphs served from deployment files, and what their nodes hold (released by `close`)."""

    def __init__(self, manager: Manager) -> None:
        self.manager = manager
        self.predictors: dict[str, list[SeldonPredictor]] = {}
        self.graphs: list[str] = []
        self._held: list[NodeModels] = []
        self._stamps: dict[Path, tuple[int, int] | None] = {}
        self._by_file: dict[Path, _FileGraphs] = {}
        self._building = _FileGraphs()

    def load_files(self, paths: Iterable[Path]) -> None:
        """Serve the graphs of these files: all of them the first time; then (a poll) those of the files that
        changed, are new or are gone since the last call (a file's graphs are rebuilt, or unloaded, as a whole)."""
        current: dict[Path, tuple[int, int] | None] = {}
        for path in paths:
            key = path.resolve()
            try:
                stat = key.stat()
                current[key] = (stat.st_mtime_ns, stat.st_size)
            except OSError:
                current[key] = None
        for key, stamp in current.items():
            if key not in self._stamps or self._stamps[key] != stamp:
                self._stamps[key] = stamp
                self._load_file(key)
        for key in [k for k in self._stamps if k not in current]:
            del self._stamps[key]
            log.info("deployment file %s is gone: unloading its graphs", key.name)
            self._replace(key, _FileGraphs())

    def reload(self, name: str) -> bool:
        """Build the graphs of the file that serves graph `name` again (a load request for it); False when no
        deployment file has a graph of that name. Raises the graph's reason when it cannot be served."""
        path = next((p for p, built in self._by_file.items() if name in built.graphs), None)
        if path is None:
            return False
        self._load_file(path)
        entry = self.manager.entry(name)  # type: ignore[attr-defined]
        if entry is not None and not entry.ready:
            raise InferError.invalid(f"failed to load '{name}': {entry.reason or 'the graph is not served'}")
        return True

    def _load_file(self, path: Path) -> None:
        previous = self._by_file.get(path)
        self._building = _FileGraphs(keep=previous.models() if previous is not None else set())
        try:
            resources = read_resources(path)
        except ValueError as exc:
            log.error("%s", exc)
            resources = []
        for resource in resources:
            self.load_resource(resource, path.parent, path.name)
        self._replace(path, self._building)

    def _replace(self, path: Path, built: _FileGraphs) -> None:
        """What a file's previous build served and this one does not is unloaded; its classes are released at
        close (requests in flight on the replaced versions may still use them)."""
        previous = self._by_file.pop(path, None)
        if built.graphs or built.held:
            self._by_file[path] = built
        if previous is None:
            return
        for name in [*(g for g in previous.graphs if g not in built.graphs),
                     *(m for m in previous.models() if m not in built.models())]:
            try:
                self.manager.unload(name)
            except InferError:
                pass
        self.graphs = [g for g in self.graphs if g not in previous.graphs or g in built.graphs]
        for name in [n for n, served in self.predictors.items() if not any(p.served_as in built.graphs
                                                                           for p in served)]:
            if any(p.served_as in previous.graphs for p in self.predictors[name]):
                del self.predictors[name]

    def load_resource(self, resource: Any, base: Path, source: str = "") -> None:
        kind = resource.get("kind") if isinstance(resource, dict) else None
        name = _name_of(resource)
        if kind not in ("SeldonDeployment", "InferenceGraph"):
            log.info("%s: skipping a resource of kind %r (serving SeldonDeployment and InferenceGraph)", source, kind)
            return
        if not name:
            log.error("%s: a %s without metadata.name is skipped", source, kind)
            return
        if kind == "InferenceGraph":
            try:
                self._serve(build_inference_graph(resource, self.manager))
            except (ValueError, InferError) as exc:
                self._failed(name, _reason(exc))
            return
        self._seldon(name, resource, base)

    def _failed(self, name: str, reason: str) -> None:
        """A graph that could not be built: listed with the reason; one that served from an earlier build of its
        file keeps serving (as a failed reload of a model does)."""
        self.manager.graph_failed(name, reason)  # type: ignore[attr-defined]
        self._building.graphs.append(name)

    def _serve(self, served: GraphModel) -> None:
        self.manager.serve_graph(served)  # type: ignore[attr-defined]
        if served.name not in self.graphs:
            self.graphs.append(served.name)
        self._building.graphs.append(served.name)
        log.info("serving %s '%s'", "Seldon graph" if served.platform == GRAPH_PLATFORM else "InferenceGraph",
                 served.name)

    def _seldon(self, name: str, resource: dict[str, Any], base: Path) -> None:
        spec = resource.get("spec")
        predictors = spec.get("predictors") if isinstance(spec, dict) else None
        if not isinstance(predictors, list) or not predictors or not all(isinstance(p, dict) for p in predictors):
            self._failed(name, "spec.predictors must be a non-empty list")
            return
        names = [str(p.get("name") or f"predictor-{i}") for i, p in enumerate(predictors)]
        if len(set(names)) != len(names):
            self._failed(name, "predictor names must differ")
            return
        served: list[SeldonPredictor] = []
        for predictor, predictor_name in zip(predictors, names, strict=True):
            served_as = name if len(predictors) == 1 else f"{name}-{predictor_name}"
            graph = self._predictor(served_as, predictor, base)
            if graph is not None:
                served.append(SeldonPredictor(name, predictor_name, served_as, _traffic(predictor),
                                              bool(predictor.get("shadow")), graph))
        self.predictors[name] = served
        if len(predictors) > 1:
            main = sorted((p for p in served if not p.shadow), key=lambda p: -p.traffic)
            if main:
                self._serve(_seldon_model(name, main[0].graph, self.manager))
            else:
                self._failed(name, "no predictor could be served")

    def _predictor(self, served_as: str, predictor: dict[str, Any], base: Path) -> SeldonGraph | None:
        held = NodeModels()
        try:
            root = build_units(self.manager, served_as, predictor, base, held)
            graph = SeldonGraph(served_as, root)
            self._serve(_seldon_model(served_as, graph, self.manager))
        except (ValueError, InferError) as exc:
            held.release(self.manager, keep=self._building.keep)  # what an earlier build serves stays
            self._failed(served_as, _reason(exc))
            return None
        self._held.append(held)
        self._building.held.append(held)
        return graph

    def close(self) -> None:
        """Release what the nodes hold (their models are retired with the server's)."""
        for held in self._held:
            for cleanup in held.cleanups:
                try:
                    cleanup()
                except Exception:  # one failing cleanup must not keep the others from running
                    log.exception("releasing a graph node failed")
            held.cleanups.clear()
        self._held.clear()


@dataclass(slots=True)
class _FileGraphs:
    """What one deployment file's build serves: its graphs and what their nodes hold."""

    graphs: list[str] = field(default_factory=list)
    held: list[NodeModels] = field(default_factory=list)
    keep: set[str] = field(default_factory=set)  # the node models of the build it replaces

    def models(self) -> set[str]:
        return {m for h in self.held for m in h.models}


def _traffic(predictor: dict[str, Any]) -> int:
    try:
        return int(predictor.get("traffic") or 0)
    except (TypeError, ValueError):
        return 0


def _reason(exc: Exception) -> str:
    return exc.message if isinstance(exc, InferError) else str(exc)


def _seldon_model(name: str, graph: SeldonGraph, manager: Manager) -> GraphModel:
    """A Seldon graph as a served model: its V2 inputs are those of the model its root calls, where that is one
    (else one FP64 `input` [-1, -1]); one `output` (FP64 [-1, -1] for numbers, BYTES for text)."""
    config = ModelConfig()
    root: Unit = graph.root
    entry = None
    if isinstance(root.node, ServedNode) and "TRANSFORM_INPUT" in root.methods:
        try:
            entry = manager.get(root.node.model_name)
        except InferError:
            entry = None
    if entry is not None and entry.config.input:
        config.input.extend(entry.config.input)
        config.max_batch_size = entry.config.max_batch_size
    else:
        tensor = config.input.add()
        tensor.name, tensor.data_type = "input", DataType.TYPE_FP64
        tensor.dims.extend([-1, -1])
    out = config.output.add()
    out.name, out.data_type = "output", DataType.TYPE_FP64
    out.dims.extend([-1, -1])
    return graph_model(name, config, GRAPH_PLATFORM, graph.run, takes_messages=True)
