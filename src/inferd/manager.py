"""Model lifecycle: which models and versions exist, their state (READY / UNAVAILABLE with a reason), load, unload."""

from __future__ import annotations

import contextlib
import enum
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from .backends import BACKENDS, Backend, create_backend, resolve_backend
from .backends.settings import BackendSettings
from .classification import read_labels
from .config import ConfigError, ModelConfig, ModelInstanceGroup, read_config, validate_config
from .graph import GraphScheduler, InnerCalls
from .graph.ensemble import ENSEMBLE_PLATFORM, composing_models, is_ensemble, plan_ensemble
from .graph.traffic import TrafficRule, rule_of
from .instances.bls import BlsHandler, BlsRequest, Tensors
from .instances.environments import EnvironmentBuildError, EnvironmentCache, PythonEnvironment, find_requirements
from .instances.process import ProcessInstance
from .model import ServedModel
from .model_limits import MEMORY_LIMIT, memory_limit_bytes, request_timeout_ms
from .observability import ModelStatistics
from .repository import ModelRepository, loose_entries, safe_join, select_versions, version_dirs
from .scheduling import Arrivals, DirectScheduler, DynamicBatcher, InstancePool, Scheduler
from .types import ErrorKind, InferError, describe_error
from .warmup import warm_up

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
    fingerprint: tuple[tuple[str, int, int], ...] = ()
    # Folder of the files given with the load request that serves now (see `_write_override`); removed when another
    # load replaces what serves from it (once the old versions are retired), on unload and on close.
    override: Path | None = None
    # Its canary split / shadows (the `traffic` stage reads it on every request for the name).
    traffic: TrafficRule | None = None
    # Served from outside the repository (a deployment's graph, or a model of its nodes): polling leaves it alone.
    external: bool = False

    def refresh(self) -> None:
        self.ready = sorted((v.served for v in self.versions.values() if v.served is not None),
                            key=lambda m: m.version, reverse=True)


class ModelManager:
    def __init__(self, repository: ModelRepository, *, autocomplete: bool = True, unload_timeout: float = 30.0,
                 environments: EnvironmentCache | None = None, arrivals: Arrivals | None = None,
                 backend_settings: BackendSettings | None = None) -> None:
        self.repository = repository
        # Triton's --backend-config (default-max-batch-size for auto-complete).
        self.backend_settings = backend_settings if backend_settings is not None else BackendSettings()
        # The front doors' arrival reports, handed to every dynamic batcher (see scheduling.Arrivals).
        self.arrivals = arrivals if arrivals is not None else Arrivals()
        # Per-model Python environments (a requirements.txt next to a model that runs in instance processes).
        self.environments = environments if environments is not None else EnvironmentCache()
        self.autocomplete = autocomplete
        self.unload_timeout = unload_timeout
        self._models: dict[str, ModelEntry] = {}
        self._lock = threading.RLock()
        self._load_locks: dict[str, threading.Lock] = {}
        # Runs the BLS requests of Python models (a model calling another); the Server installs its core's.
        self.bls: BlsHandler | None = None
        # How graphs (ensembles) call their composing models: the server's pipeline; the Server installs itself.
        self.inner: InnerCalls | None = None
        # Override folders of replaced loads, removed once their versions are retired (or at close).
        self._retiring_overrides: set[Path] = set()
        self._thread_state = threading.local()

    # ---- queries (hot path: plain dict reads) ----

    def get(self, name: str, version: str = "") -> ServedModel:
        """The ready model version a request should use, or NOT_FOUND in Triton's words."""
        entry = self._models.get(name)
        if entry is None:
            raise InferError.not_found(f"Request for unknown model: '{name}' is not found")
        ready = entry.ready
        if not version:
            if not ready:
                raise InferError.not_found(f"Request for unknown model: '{name}' has no available versions"
                                           f"{_why_unavailable(entry)}")
            return ready[0]
        for served in ready:
            if served.version_str == version:
                return served
        if not version.isdigit():
            raise InferError.invalid(f"model version must be a non-negative integer, got '{version}'")
        raise InferError.not_found(f"Request for unknown model: '{name}' version {version} is not found"
                                   f"{_why_unavailable(entry, int(version))}")

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
            list(pool.map(self._load_at_start, wanted))

    def _load_at_start(self, name: str) -> None:
        """Load a model unless an ensemble that needs it has loaded it already."""
        with contextlib.suppress(InferError):
            self._ensure_loaded(name)

    def poll(self) -> None:
        """Apply what changed in the repository while serving: new, changed and removed models and versions."""
        self.repository.refresh()
        models, problems = self.repository.scan()
        for name, reason in problems.items():
            self._record_failure(name, reason)
        with self._lock:
            known = dict(self._models)
        for name, path in models.items():
            if name in problems:
                continue
            entry = known.get(name)
            if entry is None or (entry.override is None and fingerprint_of(path) != entry.fingerprint):
                log.info("repository poll: %s model '%s'", "loading new" if entry is None else "reloading changed",
                         name)
                self._load_quietly(name)
        for name, entry in known.items():
            if name not in models and entry.override is None and entry.versions and not entry.external:
                log.info("repository poll: model '%s' was removed from the repository", name)
                self.unload(name)

    def _load_quietly(self, name: str) -> None:
        with contextlib.suppress(InferError):  # already recorded as the model's state and logged
            self.load(name)

    def _record_failure(self, name: str, reason: str) -> None:
        with self._lock:
            entry = self._models.setdefault(name, ModelEntry(name))
            entry.reason = reason

    def load(self, name: str, config: ModelConfig | None = None, files: Mapping[str, bytes] | None = None) -> None:
        """Load (or reload) a model's versions. Raises INVALID_ARGUMENT / NOT_FOUND with the reason on failure.

        A reload brings the new versions to READY before the old ones stop taking requests; requests already
        queued on the old ones finish there. A reload that fails leaves what was serving as it was.
        `files` (relative path -> content) replace the model's folder, as Triton's `file:` load parameters do.
        """
        check_model_name(name)
        with self._load_locks.setdefault(name, threading.Lock()):
            self._loading_here().add(name)
            try:
                self._load_locked(name, config, files)
            finally:
                self._loading_here().discard(name)
        self._reload_dependents(name)

    # ---- ensembles: models whose steps are other models ----

    def _loading_here(self) -> set[str]:
        """The models this thread is loading now (an ensemble loads its composing models inside its own load)."""
        loading: set[str] | None = getattr(self._thread_state, "loading", None)
        if loading is None:
            loading = self._thread_state.loading = set()
        return loading

    def _ensure_loaded(self, name: str) -> None:
        """Load a model unless it serves already (or another thread just loaded it: the load lock waits for it)."""
        check_model_name(name)
        with self._load_locks.setdefault(name, threading.Lock()):
            entry = self._models.get(name)
            if entry is not None and entry.ready:
                return
            self._loading_here().add(name)
            try:
                self._load_locked(name, None, None)
            finally:
                self._loading_here().discard(name)
        self._reload_dependents(name)

    def _dependents(self, name: str) -> list[str]:
        """The ensembles known to this manager that have a step on `name`."""
        with self._lock:
            entries = list(self._models.values())
        return [e.name for e in entries
                if e.name != name and e.config is not None and is_ensemble(e.config)
                and name in composing_models(e.config)]

    def _reload_dependents(self, name: str) -> None:
        """A composing model that loaded brings back the ensembles its absence made unavailable (as Triton
        reloads the models that depend on a loaded one)."""
        loading = self._loading_here()
        for dependent in self._dependents(name):
            entry = self._models.get(dependent)
            if dependent in loading or entry is None or entry.ready or not entry.versions:
                continue
            log.info("model '%s' is loaded: reloading ensemble '%s', which needs it", name, dependent)
            self._load_quietly(dependent)

    def _composing_gone(self, name: str) -> None:
        """An unloaded model makes the ensembles with a step on it UNAVAILABLE (they stay listed, with why)."""
        for dependent in self._dependents(name):
            reason = f"composing model '{name}' is not loaded"
            with self._lock:
                entry = self._models.get(dependent)
                if entry is None or not entry.ready:
                    continue
                old = entry.versions
                entry.versions = {v: VersionStatus(ModelState.UNAVAILABLE, reason) for v in old}
                entry.refresh()
            log.warning("ensemble '%s' is UNAVAILABLE: %s", dependent, reason)
            _retire_all(old, self.unload_timeout)

    def _prepare_ensemble(self, name: str, model_dir: Path,
                          config: ModelConfig) -> tuple[ModelConfig, str, dict[int, Path], None]:
        """An ensemble's config as Triton checks it (its steps against the loaded composing models come when its
        versions load); its composing models are loaded first, in every control mode, as Triton does."""
        if not config.name:
            config.name = name
        if not config.platform:
            config.platform = ENSEMBLE_PLATFORM
        config.ClearField("instance_group")
        validate_config(config, name)
        rule_of(config)
        self._check_ensemble_cycle(name, config, [name])
        available = version_dirs(model_dir) or {1: model_dir}  # Triton wants an (empty) version folder; we do not
        selected = select_versions(config, list(available))
        for composing in composing_models(config):
            try:
                self._ensure_loaded(composing)
            except InferError as exc:  # the plan check says which step needs it, with this reason
                log.error("ensemble '%s': composing model '%s' did not load: %s", name, composing, exc.message)
        return config, ENSEMBLE_PLATFORM, {v: available[v] for v in selected}, None

    def _check_ensemble_cycle(self, name: str, config: ModelConfig, path: list[str]) -> None:
        """Ensembles that contain each other (read from the repository, before anything loads)."""
        for composing in composing_models(config):
            if composing in path:
                chain = " -> ".join([*path[path.index(composing):], composing])
                raise ConfigError(f"ensemble cycle: {chain}")
            folder = self.repository.find(composing)
            try:
                inner = read_config(folder) if folder is not None else None
            except ConfigError:
                inner = None
            if inner is not None and is_ensemble(inner):
                self._check_ensemble_cycle(name, inner, [*path, composing])

    def _load_ensemble(self, name: str, version: int, config: ModelConfig) -> ServedModel:
        plan = plan_ensemble(name, config, self.get)
        stats = ModelStatistics(name, str(version))
        scheduler = GraphScheduler(name, plan.runner(lambda: self.inner), stats)
        served = ServedModel(name, version, config, ENSEMBLE_PLATFORM, scheduler, stats)
        served.partial_outputs = True  # a skipped step's outputs are left out of the answer
        log.info("loaded ensemble '%s' version %d (%d steps)", name, version, len(plan.steps))
        return served

    def _load_locked(self, name: str, config: ModelConfig | None, files: Mapping[str, bytes] | None) -> None:
        if not files:
            self._load_from(name, self.repository.find(name), config, None)
            return
        folder = self._write_override(name, files)
        try:
            self._load_from(name, folder, config, folder)
        finally:  # a load that does not serve from its folder (it failed) leaves nothing in the temp dir
            with self._lock:
                entry = self._models.get(name)
                adopted = entry is not None and entry.override == folder
            if not adopted:
                _remove_override(folder)

    def _load_from(self, name: str, model_dir: Path | None, config: ModelConfig | None,
                   override: Path | None) -> None:
        """Load from `model_dir`: the repository's folder of the model, or `override` (files of the request)."""
        if model_dir is None:
            raise InferError.not_found(f"failed to load '{name}', failed to poll from model repository")
        fingerprint = fingerprint_of(model_dir)
        try:
            config, backend, versions, probe = self._prepare(name, model_dir, config)
            labels = read_labels(model_dir, config)
        except Exception as exc:  # a bad config, or an auto-complete that raised: the model is UNAVAILABLE
            reason = str(exc) if isinstance(exc, (ConfigError, InferError)) else describe_error(exc)
            stale = None
            with self._lock:
                entry = self._models.setdefault(name, ModelEntry(name))
                entry.fingerprint = fingerprint
                if not entry.ready:  # a failed reload leaves a serving model as it was
                    entry.reason = reason
                    entry.versions = {}
                    entry.refresh()
                    stale, entry.override = entry.override, None
            _remove_override(stale)
            log.error("model '%s' is UNAVAILABLE: %s", name, reason)
            raise InferError.invalid(f"failed to load '{name}': {reason}") from None

        with self._lock:  # a first load shows its versions as LOADING (a reload keeps showing what serves)
            entry = self._models.setdefault(name, ModelEntry(name))
            if not entry.ready:
                entry.versions = {version: VersionStatus(ModelState.LOADING) for version in versions}
                entry.reason = ""
                entry.refresh()
        loaded: dict[int, VersionStatus] = {}
        for version, path in versions.items():
            try:
                # The backend that auto-completed the config from this version's file serves as its first instance.
                first = probe if probe is not None and path == probe[0] else None
                served = self._load_version(name, version, path, config, backend, first[1] if first else None)
                served.labels = labels
                try:  # Triton's model_warmup (warmup.py), before the version is READY
                    warm_up(served, model_dir)
                except BaseException:
                    _retire(served, 0)
                    raise
                loaded[version] = VersionStatus(ModelState.READY, served=served)
            except Exception as exc:  # whatever a backend raises, the version is UNAVAILABLE with the reason
                if isinstance(exc, InferError):
                    reason = exc.message
                elif isinstance(exc, (ConfigError, OSError, EnvironmentBuildError)):
                    reason = str(exc)
                else:
                    reason = describe_error(exc)
                loaded[version] = VersionStatus(ModelState.UNAVAILABLE, reason)
                log.error("model '%s' version %d is UNAVAILABLE: %s", name, version, reason)
        failed = [f"version {v}: {s.reason}" for v, s in loaded.items() if s.state != ModelState.READY]

        previous: Path | None = None  # the override folder the old versions served from
        with self._lock:
            entry = self._models.setdefault(name, ModelEntry(name))
            entry.fingerprint = fingerprint
            serving = any(s.served for s in loaded.values())
            keep_old = bool(entry.ready) and not serving
            if keep_old:
                old, retired = {}, loaded
            else:
                old, retired = entry.versions, {}
                entry.versions, entry.reason, entry.config = loaded, "", config
                entry.traffic = rule_of(config)  # checked when prepared: a malformed one never gets here
                # A folder is kept only while versions serve from it; a load that failed leaves none behind.
                previous, entry.override = entry.override, override if serving else None
                entry.refresh()
                if previous is not None and old:
                    self._retiring_overrides.add(previous)
        for status in retired.values():
            if status.served is not None:
                _retire(status.served, 0)
        if old:
            # The old versions stop taking requests now; those in flight finish on them, off this thread; then
            # the folder they were loaded from goes.
            threading.Thread(target=self._retire_old, args=(old, previous), daemon=True,
                             name=f"inferd-retire-{name}").start()
        else:
            _remove_override(previous)
        if failed:
            raise InferError.invalid(f"failed to load '{name}': " + "; ".join(failed))

    def _retire_old(self, old: Mapping[int, VersionStatus], override: Path | None) -> None:
        try:
            _retire_all(old, self.unload_timeout)
        finally:
            if override is not None:
                with self._lock:
                    self._retiring_overrides.discard(override)
                _remove_override(override)

    def _write_override(self, name: str, files: Mapping[str, bytes]) -> Path:
        """Model files given with the load request go to a folder of their own (never into the repository):
        `<temp dir>/inferd-load-<random>/<name>`. Removed (`_remove_override`) when nothing serves from it."""
        import shutil
        import tempfile

        base = Path(tempfile.mkdtemp(prefix=OVERRIDE_PREFIX))
        root = base / name  # the name was checked: one plain path component
        try:
            root.mkdir()
            for relative, content in files.items():
                target = safe_join(root, relative)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(content)
        except (ValueError, OSError) as exc:
            shutil.rmtree(base, ignore_errors=True)
            raise InferError.invalid(f"failed to load '{name}': {exc}") from None
        return root

    def _prepare(self, name: str, model_dir: Path,
                 override: ModelConfig | None) -> tuple[ModelConfig, str, dict[int, Path], tuple[Path, Backend] | None]:
        config = override if override is not None else read_config(model_dir)
        if config is not None and is_ensemble(config):
            return self._prepare_ensemble(name, model_dir, config)
        return self.complete_config(name, model_dir, config)

    def complete_config(self, name: str, model_dir: Path, config: ModelConfig | None, *, check: bool = True
                        ) -> tuple[ModelConfig, str, dict[int, Path], tuple[Path, Backend] | None]:
        """A (non-ensemble) model's effective config as it would load: auto-completed from its newest selected
        version's file, its backend and instance groups filled in, checked (unless `check` is False: `inferd repo
        validate` lists every problem itself); with the backend name, the selected version folders and the backend
        that auto-completed (it serves as the first instance). Loads nothing else (`inferd repo show` calls it
        too)."""
        if config is None:
            if not self.autocomplete:
                raise ConfigError(f"{model_dir}/config.pbtxt not found and auto-complete is disabled")
            config = ModelConfig()
        if not config.name:
            config.name = name
        available = version_dirs(model_dir)
        if not available:
            _check_version_folder(name, model_dir, config)
        backend = resolve_backend(config, model_dir, list(available.values()))
        selected = select_versions(config, list(available))
        probe: tuple[Path, Backend] | None = None
        if self.autocomplete and selected:
            prober = create_backend(backend)
            if hasattr(prober, "interpreter_for"):  # it runs model code to auto-complete, as instances would
                cast(Any, prober).interpreter_for = lambda files: self._interpreter(name, files)
            if hasattr(prober, "default_max_batch_size"):  # it batches config-less models by default
                cast(Any, prober).default_max_batch_size = self.backend_settings.default_max_batch_size(backend)
            prober.autocomplete(config, available[selected[-1]])
            probe = (available[selected[-1]], prober)
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
        if check:
            validate_config(config, name)
            rule_of(config)  # a malformed canary / shadow setting is the load's error
            request_timeout_ms(config)  # a bad value is the load's error, before any instance starts
            memory_limit_bytes(config)
        return config, backend, {v: available[v] for v in selected}, probe

    def _interpreter(self, name: str, files: Path) -> str | None:
        """The interpreter of a version's own environment (built now if need be), or None for the server's."""
        requirements = find_requirements(files)
        if requirements is None:
            return None
        try:
            return str(self.environments.ensure(requirements, name).python)
        except EnvironmentBuildError as exc:
            raise ConfigError(str(exc)) from None

    def _load_version(self, name: str, version: int, path: Path, config: ModelConfig,
                      backend_name: str, first: Backend | None = None) -> ServedModel:
        if backend_name == ENSEMBLE_PLATFORM:
            return self._load_ensemble(name, version, config)
        instances: list[Backend] = []
        # A backend whose model format carries its own requirements file names it (TorchServe archives, when asked
        # to install them); otherwise the requirements.txt beside the model's files.
        first = first if first is not None else create_backend(backend_name)
        hook = getattr(first, "requirements_file", None)
        requirements = (hook(config, path) if hook is not None else None) or find_requirements(path)
        environment: PythonEnvironment | None = None
        try:
            for group in config.instance_group:
                devices = _devices(group)
                for i in range(group.count):
                    backend = first if first is not None else create_backend(backend_name)
                    first = None
                    if backend.releases_gil:
                        # (A backend whose model format always carries one, as a record, says so: MLflow.)
                        if requirements is not None and not instances and not getattr(
                                backend, "requirements_are_metadata", False):
                            log.warning("model '%s' version %d: %s is ignored: only models that run in instance "
                                        "processes (Python models) get an environment of their own", name,
                                        version, requirements)
                        backend.load(config, path, devices[i % len(devices)])
                    else:  # GIL-bound code runs in a process of its own; the instances load at the same time
                        if requirements is not None and environment is None:
                            environment = self.environments.ensure(requirements, name)
                        backend = ProcessInstance(BACKENDS[backend_name].target, config, path,
                                                  devices[i % len(devices)], environment=environment,
                                                  bls=self._run_bls)
                    instances.append(backend)
            for instance in instances:
                if isinstance(instance, ProcessInstance):
                    instance.wait_loaded()
        except BaseException:
            for instance in instances:  # what did load must not linger (instance processes above all)
                with contextlib.suppress(Exception):
                    instance.unload()
            raise
        if memory_limit_bytes(config) and not all(isinstance(i, ProcessInstance) for i in instances):
            log.warning("model '%s' version %d: %s is ignored: only models that run in instance processes (Python "
                        "models) get a memory limit", name, version, MEMORY_LIMIT)
        stats = ModelStatistics(name, str(version))
        scheduler = self.make_scheduler(name, version, config, instances, stats)
        log.info("loaded model '%s' version %d (%d instance(s), %s)", name, version, len(instances),
                 "dynamic batching" if isinstance(scheduler, DynamicBatcher) else "no batching")
        served = ServedModel(name, version, config, config.platform or backend_name, scheduler, stats)
        served.spawn = self._spawner(path, config, backend_name, environment)
        return served

    def make_scheduler(self, name: str, version: int, config: ModelConfig, instances: list[Backend],
                       stats: ModelStatistics) -> Scheduler:
        """The scheduler of a version's instances, as its config asks (also what a model woken from zero gets)."""
        pool = InstancePool(instances, stats, request_timeout_ms(config))
        if config.HasField("dynamic_batching") and config.max_batch_size > 0:
            return DynamicBatcher(pool, f"{name}-{version}", config.max_batch_size, config.dynamic_batching,
                                  self.arrivals)
        return DirectScheduler(pool, f"{name}-{version}")

    def _spawner(self, path: Path, config: ModelConfig, backend_name: str,
                 environment: PythonEnvironment | None) -> Callable[[], Backend]:
        """How one more instance of a loaded version is made, as its first ones were (on its first group's device):
        for the instance autoscaler, and for a model woken from zero (scaling/)."""
        device = _devices(config.instance_group[0])[0]

        def spawn() -> Backend:
            backend = create_backend(backend_name)
            if backend.releases_gil:
                backend.load(config, path, device)
                return backend
            instance = ProcessInstance(BACKENDS[backend_name].target, config, path, device, environment=environment,
                                       bls=self._run_bls)
            try:
                instance.wait_loaded()
            except BaseException:
                with contextlib.suppress(Exception):
                    instance.unload()
                raise
            return instance

        return spawn

    def _run_bls(self, caller: tuple[str, str], request: BlsRequest) -> Tensors:
        """What instance processes call: the handler installed now (instances outlive a reassignment of it)."""
        handler = self.bls
        if handler is None:
            raise InferError(ErrorKind.UNSUPPORTED, "BLS requests are not served by this model manager")
        return handler(caller, request)

    # ---- graphs and their models from deployment files (graph/deployments.py) ----

    def load_folder(self, name: str, folder: Path, config: ModelConfig | None = None) -> None:
        """Load a model from a folder outside the repository (a node of a deployment's graph); raises as `load`.
        Polling leaves it alone; unloading it is as for any model."""
        check_model_name(name)
        with self._load_locks.setdefault(name, threading.Lock()):
            with self._lock:
                entry = self._models.get(name)
                if entry is not None and entry.versions and not entry.external:
                    raise InferError.invalid(f"failed to load '{name}': a model of the repository has that name")
                self._models.setdefault(name, ModelEntry(name)).external = True
            self._load_from(name, folder, config, None)

    def serve_graph(self, served: ServedModel) -> None:
        """Serve a graph (a Seldon graph, a KServe InferenceGraph) as a READY model of its name, replacing what
        served under that name from a deployment before; a repository model of that name is never replaced."""
        name = served.name
        check_model_name(name)
        with self._lock:
            entry = self._models.get(name)
            if entry is not None and entry.versions and not entry.external:
                raise InferError.invalid(f"graph '{name}' has the name of a model of the repository")
            entry = self._models.setdefault(name, ModelEntry(name))
            entry.external = True
            old = entry.versions
            entry.versions = {served.version: VersionStatus(ModelState.READY, served=served)}
            entry.reason, entry.config = "", served.config
            entry.refresh()
        if old:
            threading.Thread(target=_retire_all, args=(old, self.unload_timeout), daemon=True,
                             name=f"inferd-retire-{name}").start()

    def graph_failed(self, name: str, reason: str) -> None:
        """A deployment's graph that could not be built: listed UNAVAILABLE with the reason."""
        with self._lock:
            entry = self._models.setdefault(name, ModelEntry(name))
            if entry.versions and not entry.external:
                return  # a repository model of that name serves on
            entry.external = True
            entry.reason = reason
        log.error("graph '%s' is UNAVAILABLE: %s", name, reason)

    def unload(self, name: str) -> None:
        """Stop taking requests for the model, wait for those in flight (up to `unload_timeout`), free it."""
        check_model_name(name)
        with self._lock:
            entry = self._models.get(name)
            if entry is None:
                raise InferError.not_found(f"failed to unload '{name}': model is not loaded")
            old = entry.versions
            # No new requests reach it; the index says UNLOADING while those in flight finish.
            unloading = {version: VersionStatus(ModelState.UNLOADING, "unloading") for version in old}
            entry.versions = unloading
            entry.refresh()
            entry.reason = "unloaded"
        _retire_all(old, self.unload_timeout)
        stale = None
        with self._lock:
            if entry.versions is unloading:  # unless a load came in meanwhile (it removes the folder then)
                entry.versions = {}
                entry.refresh()
                stale, entry.override = entry.override, None
        _remove_override(stale)
        log.info("unloaded model '%s'", name)
        self._composing_gone(name)

    def close(self, timeout: float | None = None) -> None:
        """Retire every model. With `timeout`, the waits for requests in flight share one deadline `timeout` s away
        (a shutdown's exit timeout); without, each model waits up to `unload_timeout`."""
        with self._lock:
            entries = list(self._models.values())
        deadline = None if timeout is None else time.monotonic() + timeout
        for entry in entries:
            wait = self.unload_timeout if deadline is None else max(0.0, deadline - time.monotonic())
            _retire_all(entry.versions, wait)
        with self._lock:
            folders = [*self._retiring_overrides, *(e.override for e in entries if e.override is not None)]
            self._retiring_overrides.clear()
            for entry in entries:
                entry.override = None
        for folder in folders:
            _remove_override(folder)


OVERRIDE_PREFIX = "inferd-load-"  # the temp-dir folders of load requests' files


def _remove_override(folder: Path | None) -> None:
    """Remove a load request's folder (`<temp dir>/inferd-load-<random>/<name>`) with its parent."""
    if folder is None:
        return
    import shutil

    base = folder.parent
    if base.name.startswith(OVERRIDE_PREFIX):  # never anything but a folder `_write_override` made
        shutil.rmtree(base, ignore_errors=True)


def _why_unavailable(entry: ModelEntry, version: int | None = None) -> str:
    """Why a model (or one version of it) takes no requests, as a suffix of the NOT_FOUND text: its state and
    reason. Built only on that error path."""
    if entry.reason:
        return f": it is UNAVAILABLE: {entry.reason}"
    versions = entry.versions if version is None else {v: s for v, s in entry.versions.items() if v == version}
    states = [f"version {v} is {s.state.value}{': ' + s.reason if s.reason else ''}"
              for v, s in sorted(versions.items()) if s.state != ModelState.READY]
    if states:
        return ": " + "; ".join(states)
    return ": it has no version folder the version policy selects" if version is None and not entry.versions else ""


def _check_version_folder(name: str, model_dir: Path, config: ModelConfig) -> None:
    """A model folder with files but no numbered version folder: the model file was put beside config.pbtxt (or in
    a folder named otherwise, `v1/`). Say so, with the layout that serves (ConfigError: the model is UNAVAILABLE
    with this reason)."""
    loose = loose_entries(model_dir)
    if not loose:
        return
    target = config.default_model_filename or _model_file_for(loose)
    if target is None:  # look one folder down: `v1/model.onnx`, `version_1/model.onnx`
        inner = [loose_entries(model_dir / entry) for entry in loose if (model_dir / entry).is_dir()]
        target = next((t for t in (_model_file_for(names) for names in inner) if t is not None), loose[0])
    raise ConfigError(f"no version folder found: put the model file in a numbered folder, "
                      f"{name}/1/{target} (found: {', '.join(loose[:8])}{', ...' if len(loose) > 8 else ''})")


def _model_file_for(names: list[str]) -> str | None:
    """The name the model file should have in the version folder: the one found when a backend knows it by that
    name, else the default name of the backend its suffix belongs to (`resnet.onnx` -> `model.onnx`)."""
    import fnmatch

    for found in names:
        for spec in BACKENDS.values():
            if any(fnmatch.fnmatchcase(found, pattern) for pattern in spec.filenames):
                return found
    if "saved_model.pb" in names:  # a SavedModel's own files, without the folder Triton names it by
        return f"{BACKENDS['tensorflow'].default_filename}/saved_model.pb"
    for found in names:
        suffix = Path(found).suffix
        for spec in BACKENDS.values():
            if suffix and Path(spec.default_filename).suffix == suffix:
                return spec.default_filename
    return None


def check_model_name(name: str) -> None:
    """A model name is one plain path component: it can never lead outside the repository or a load folder."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise InferError.invalid(f"invalid model name '{name}': a model name is a folder name, without '/' or "
                                 "'\\', and not '.' or '..'")


# A request that looked up a version just before it was swapped out reaches its scheduler within microseconds;
# retiring waits this long before trusting "nothing pending".
_RETIRE_GRACE_S = 0.1


def _retire(served: ServedModel, timeout: float) -> None:
    """Wait (up to `timeout` s) for a version's requests in flight, then stop its scheduler and free its instances."""
    time.sleep(_RETIRE_GRACE_S)
    deadline = time.monotonic() + timeout
    while served.stats.pending > 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    served.scheduler.close()
    for instance in served.scheduler.pool.instances:
        try:
            instance.unload()
        except Exception:  # a backend that fails to clean up must not stop the others
            log.exception("model '%s' version %d: unload failed", served.name, served.version)


def _retire_all(versions: Mapping[int, VersionStatus], timeout: float) -> None:
    for status in versions.values():
        if status.served is not None:
            _retire(status.served, timeout)


def fingerprint_of(model_dir: Path) -> tuple[tuple[str, int, int], ...]:
    """What polling compares: every file of the model folder with its size and modification time."""
    found = []
    for path in sorted(model_dir.rglob("*")):
        try:
            st = path.stat()
        except OSError:
            continue
        if path.is_file():
            found.append((str(path.relative_to(model_dir)), st.st_size, st.st_mtime_ns))
    return tuple(found)


def _devices(group: ModelInstanceGroup) -> list[str]:
    if group.kind == ModelInstanceGroup.KIND_GPU:
        return [f"cuda:{g}" for g in (list(group.gpus) or [0])]
    return ["cpu"]
