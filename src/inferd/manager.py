"""Model lifecycle: which models and versions exist, their state (READY / UNAVAILABLE with a reason), load, unload."""

from __future__ import annotations

import contextlib
import enum
import logging
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from .backends import BACKENDS, Backend, create_backend, resolve_backend
from .config import ConfigError, ModelConfig, ModelInstanceGroup, read_config, validate_config
from .model import ServedModel
from .observability import ModelStatistics
from .repository import ModelRepository, select_versions, version_dirs
from .scheduling import DirectScheduler, DynamicBatcher, InstancePool, Scheduler
from .types import InferError

log = logging.getLogger("inferd.manager")

__all__ = ["ModelManager", "ModelState", "VersionStatus"]


class ModelState(str, enum.Enum):
    READY = "READY"
    UNAVAILABLE = "UNAVAILABLE"
    LOADING = "LOADING"
    UNLOADING = "UNLOADING"


@dataclass(slots=True)
class VersionStatus:
    state: ModelState
    reason: str = ""
    served: ServedModel | None = None


@dataclass(slots=True)
class ModelEntry:
    """Everything known about one model name."""

    name: str
    versions: dict[int, VersionStatus] = field(default_factory=dict)
    reason: str = ""  # why the model as a whole cannot load (config errors), "" otherwise
    config: ModelConfig | None = None
    # Newest ready version first; rebuilt whenever versions change (the hot path only reads it).
    ready: list[ServedModel] = field(default_factory=list)

    def refresh(self) -> None:
        self.ready = sorted((v.served for v in self.versions.values() if v.served is not None),
                            key=lambda m: m.version, reverse=True)


class ModelManager:
    def __init__(self, repository: ModelRepository, *, autocomplete: bool = True) -> None:
        self.repository = repository
        self.autocomplete = autocomplete
        self._models: dict[str, ModelEntry] = {}
        self._lock = threading.RLock()

    # ---- queries (hot path: plain dict reads) ----

    def get(self, name: str, version: str = "") -> ServedModel:
        """The ready model version a request should use, or NOT_FOUND in Triton's words."""
        entry = self._models.get(name)
        if entry is None:
            raise InferError.not_found(f"Request for unknown model: '{name}' is not found")
        ready = entry.ready
        if not version:
            if not ready:
                raise InferError.not_found(f"Request for unknown model: '{name}' has no available versions")
            return ready[0]
        for served in ready:
            if served.version_str == version:
                return served
        if not version.isdigit():
            raise InferError.invalid(f"model version must be a non-negative integer, got '{version}'")
        raise InferError.not_found(f"Request for unknown model: '{name}' version {version} is not found")

    def is_ready(self, name: str, version: str = "") -> bool:
        try:
            self.get(name, version)
        except InferError:
            return False
        return True

    def entry(self, name: str) -> ModelEntry | None:
        return self._models.get(name)

    def served(self) -> list[ServedModel]:
        """Every loaded model version."""
        return [m for entry in list(self._models.values()) for m in entry.ready]

    def names(self) -> list[str]:
        return sorted(self._models)

    def all_ready(self) -> bool:
        """Every known model has its versions ready (what `--strict-readiness` asks of server readiness)."""
        for entry in list(self._models.values()):
            if entry.reason or not entry.versions:
                return False
            if any(v.state != ModelState.READY for v in entry.versions.values()):
                return False
        return True

    def index(self) -> list[dict[str, str]]:
        """Triton's repository index: one row per model version, or per model when it has no version state."""
        rows: list[dict[str, str]] = []
        with self._lock:
            known = dict(self._models)
        try:
            on_disk, _ = self.repository.scan()
        except FileNotFoundError:
            on_disk = {}
        for name in sorted(set(known) | set(on_disk)):
            entry = known.get(name)
            if entry is None:
                rows.append({"name": name})
                continue
            if not entry.versions:
                row = {"name": name, "state": ModelState.UNAVAILABLE.value, "reason": entry.reason or
                       "no versions are available"}
                rows.append(row)
                continue
            for version in sorted(entry.versions):
                status = entry.versions[version]
                rows.append({"name": name, "version": str(version), "state": status.state.value,
                             "reason": status.reason})
        return rows

    # ---- lifecycle ----

    def load_all(self, names: Iterable[str] | None = None, workers: int = 4) -> None:
        """Load every model of the repository (or the named ones), several at a time; failures are recorded."""
        models, problems = self.repository.scan()
        for name, reason in problems.items():
            self._record_failure(name, reason)
        wanted = [n for n in (names if names is not None else models) if n not in problems]
        with ThreadPoolExecutor(max_workers=max(1, min(workers, len(wanted) or 1))) as pool:
            list(pool.map(self._load_quietly, wanted))

    def _load_quietly(self, name: str) -> None:
        with contextlib.suppress(InferError):  # already recorded as the model's state and logged
            self.load(name)

    def _record_failure(self, name: str, reason: str) -> None:
        with self._lock:
            entry = self._models.setdefault(name, ModelEntry(name))
            entry.reason = reason

    def load(self, name: str, config: ModelConfig | None = None) -> None:
        """Load (or reload) a model's versions. Raises INVALID_ARGUMENT / NOT_FOUND with the reason on failure."""
        model_dir = self.repository.find(name)
        if model_dir is None:
            raise InferError.not_found(f"failed to load '{name}', failed to poll from model repository")
        try:
            config, backend, versions = self._prepare(name, model_dir, config)
        except ConfigError as exc:
            reason = str(exc)
            self._record_failure(name, reason)
            with self._lock:
                entry = self._models[name]
                if not entry.ready:  # a failed reload leaves a serving model as it was
                    entry.versions.clear()
                    entry.refresh()
            log.error("model '%s' is UNAVAILABLE: %s", name, reason)
            raise InferError.invalid(f"failed to load '{name}': {reason}") from None

        loaded: dict[int, VersionStatus] = {}
        for version, path in versions.items():
            try:
                served = self._load_version(name, version, path, config, backend)
                loaded[version] = VersionStatus(ModelState.READY, served=served)
            except (ConfigError, InferError, OSError) as exc:
                reason = exc.message if isinstance(exc, InferError) else str(exc)
                loaded[version] = VersionStatus(ModelState.UNAVAILABLE, reason)
                log.error("model '%s' version %d is UNAVAILABLE: %s", name, version, reason)

        with self._lock:
            entry = self._models.setdefault(name, ModelEntry(name))
            old = entry.versions
            entry.versions, entry.reason, entry.config = loaded, "", config
            entry.refresh()
        for status in old.values():
            if status.served is not None:
                status.served.scheduler.close()
        failed = [f"version {v}: {s.reason}" for v, s in loaded.items() if s.state != ModelState.READY]
        if failed:
            raise InferError.invalid(f"failed to load '{name}': " + "; ".join(failed))

    def _prepare(self, name: str, model_dir: Path,
                 override: ModelConfig | None) -> tuple[ModelConfig, str, dict[int, Path]]:
        config = override if override is not None else read_config(model_dir)
        if config is None:
            if not self.autocomplete:
                raise ConfigError(f"{model_dir}/config.pbtxt not found and auto-complete is disabled")
            config = ModelConfig()
        if not config.name:
            config.name = name
        available = version_dirs(model_dir)
        backend = resolve_backend(config, model_dir, list(available.values()))
        selected = select_versions(config, list(available))
        if self.autocomplete and selected:
            create_backend(backend).autocomplete(config, available[selected[-1]])
        if not config.backend:
            config.backend = backend
        if not config.platform and BACKENDS[backend].platforms:
            config.platform = BACKENDS[backend].platforms[0]
        if not config.instance_group:
            group = config.instance_group.add()
            group.count = 1
        for i, group in enumerate(config.instance_group):
            if not group.name:
                group.name = f"{name}_{i}"
            if group.count == 0:
                group.count = 1
            if group.kind == ModelInstanceGroup.KIND_AUTO:
                group.kind = ModelInstanceGroup.KIND_CPU
        validate_config(config, name)
        return config, backend, {v: available[v] for v in selected}

    def _load_version(self, name: str, version: int, path: Path, config: ModelConfig,
                      backend_name: str) -> ServedModel:
        instances: list[Backend] = []
        for group in config.instance_group:
            devices = _devices(group)
            for i in range(group.count):
                backend = create_backend(backend_name)
                backend.load(config, path, devices[i % len(devices)])
                instances.append(backend)
        stats = ModelStatistics(name, str(version))
        pool = InstancePool(instances, stats)
        scheduler: Scheduler
        if config.HasField("dynamic_batching") and config.max_batch_size > 0:
            scheduler = DynamicBatcher(pool, f"{name}-{version}", config.max_batch_size, config.dynamic_batching)
        else:
            scheduler = DirectScheduler(pool, f"{name}-{version}")
        log.info("loaded model '%s' version %d (%d instance(s), %s)", name, version, len(instances),
                 "dynamic batching" if isinstance(scheduler, DynamicBatcher) else "no batching")
        return ServedModel(name, version, config, config.platform or backend_name, scheduler, stats)

    def unload(self, name: str) -> None:
        with self._lock:
            entry = self._models.get(name)
            if entry is None:
                raise InferError.not_found(f"failed to unload '{name}': model is not loaded")
            old = entry.versions
            entry.versions = {}
            entry.refresh()
            entry.reason = "unloaded"
        for status in old.values():
            if status.served is not None:
                status.served.scheduler.close()
        log.info("unloaded model '%s'", name)

    def close(self) -> None:
        for name in self.names():
            entry = self._models[name]
            for status in entry.versions.values():
                if status.served is not None:
                    status.served.scheduler.close()


def _devices(group: ModelInstanceGroup) -> list[str]:
    if group.kind == ModelInstanceGroup.KIND_GPU:
        return [f"cuda:{g}" for g in (list(group.gpus) or [0])]
    return ["cpu"]
