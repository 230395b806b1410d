"""The in-process SDK: the whole data plane as a library, no sockets. Network frontends are built on it."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ._version import __version__
from .backends import backend_for
from .backends.settings import BackendSettings
from .caching import CacheMetrics, CacheStage, ResponseCache
from .config import CONFIG_FILENAME, ConfigError, ModelConfig, config_from_json, config_to_json, parse_config
from .gateway.fairness import FairShareStage
from .gateway.gate import Gateway
from .gateway.routing import HostRouting, RouteStage
from .gateway.stages import AuthenticateStage
from .graph.traffic import TrafficStage, Variant
from .instances.bls import BlsRequest
from .instances.environments import EnvironmentCache
from .limits import DEFAULT_MAX_INPUTS, DEFAULT_MAX_TENSOR_ELEMENTS, RequestLimits
from .manager import ModelManager
from .memory import (
    DEFAULT_MAX_SHM_REGIONS,
    CudaSharedMemory,
    SystemSharedMemory,
)
from .model import ServedModel
from .observability import LOG_CONTROL, ModelStatistics, Tracer
from .observability.payload_log import PayloadLogger
from .pipeline import (
    SDK,
    AccountStage,
    AdmitStage,
    Pipeline,
    RequestContext,
    ResolveStage,
    RespondStage,
    ScheduleStage,
    Stage,
)
from .pipeline.access_log import AccessLogStage
from .pipeline.payload import PayloadLogStage
from .pipeline.plugins import StagePlugins
from .repository import ModelRepository
from .repository.local import deployment_files
from .scaling import Scaler
from .scaling.memory import release_freed_memory
from .scheduling import Arrivals
from .types import ErrorKind, InferenceRequest, InferenceResponse, InferError, RequestedOutput, datatype_of

if TYPE_CHECKING:
    from .graph.deployments import Deployments

log = logging.getLogger("inferd.server")

# Triton protocol extensions this server implements (listed in server metadata).
EXTENSIONS = [
    "model_repository",
    "model_configuration",
    "binary_tensor_data",
    "parameters",
    "statistics",
    "schedule_policy",
    "trace",
    "logging",
    "classification",
]

CONTROL_MODES = ("none", "poll", "explicit")

# Backends whose model files are data: loading one cannot run code the client sent. Every other backend (python,
# seldon, torchserve, mlflow, sklearn's pickles, plugins nobody here can vouch for) runs what it is given.
DATA_BACKENDS = frozenset({"onnxruntime", "pytorch", "tensorflow", "xgboost", "lightgbm", "fil"})
# Uploaded files that are code whatever backend loads them: Python sources, pickles, TorchServe archives, MLflow
# models, and requirements files (installing one runs the packages' build scripts).
CODE_SUFFIXES = (".py", ".pyc", ".pyz", ".mar", ".pkl", ".pickle", ".joblib", ".cloudpickle", ".dill")
CODE_FILENAMES = frozenset({"MLmodel", "requirements.txt"})


class Server:
    """Models from Triton-style repositories, served in-process.

    >>> server = Server(model_repository="examples/model_repository")
    >>> server.infer("simple", {"INPUT0": a, "INPUT1": b}).outputs["OUTPUT0"]
    """

    def __init__(
        self,
        model_repository: str | Path | Iterable[str | Path],
        *,
        model_control_mode: str = "none",
        load_models: Iterable[str] = (),
        strict_readiness: bool = True,
        autocomplete: bool = True,
        repository_poll_secs: float = 15.0,
        server_name: str = "inferd",
        tracer: Tracer | None = None,
        allow_client_shm: bool = False,
        max_shm_regions: int = DEFAULT_MAX_SHM_REGIONS,
        max_tensor_elements: int = DEFAULT_MAX_TENSOR_ELEMENTS,
        max_inputs: int = DEFAULT_MAX_INPUTS,
        model_env_dir: str | Path | None = None,
        allow_code_upload: bool = False,
        gateway: Gateway | None = None,
        backend_settings: BackendSettings | None = None,
        stages: Iterable[Stage] = (),
        host_routing: str | None = None,
        deployments: Iterable[str | Path] = (),
        idle_unload_secs: float = 0.0,
        model_load_timeout_secs: float = 300.0,
        model_held_requests: int = 10000,
        model_memory_limit: int = 0,
        response_cache_size: int = 0,
        payload_log: PayloadLogger | None = None,
        access_log: bool = False,
        start: bool = True,
    ) -> None:
        paths = [model_repository] if isinstance(model_repository, (str, Path)) else list(model_repository)
        if model_control_mode not in CONTROL_MODES:
            raise ValueError(f"model_control_mode must be one of {', '.join(CONTROL_MODES)}")
        self.limits = RequestLimits(max_tensor_elements, max_inputs)
        # Client memory (Triton's shared-memory extensions), shared by every frontend.
        self.shared_memory = SystemSharedMemory(enabled=allow_client_shm, max_regions=max_shm_regions)
        self.cuda_shared_memory = CudaSharedMemory()
        # model_env_dir: where the Python environments of models' requirements.txt are cached.
        environments = EnvironmentCache(model_env_dir) if model_env_dir is not None else None
        # What the front doors have read but not yet started, per event loop: the batchers' hint (see Arrivals).
        self.arrivals = Arrivals()
        self.manager = ModelManager(ModelRepository(paths), autocomplete=autocomplete, environments=environments,
                                    arrivals=self.arrivals, backend_settings=backend_settings)
        self.manager.bls = self._run_bls  # Python models' calls of other models go through this core
        self.manager.inner = self  # and so do graphs' (ensembles') calls of their composing models
        self.model_control_mode = model_control_mode
        # Whether a load request's `file:` overrides may hold code (a Python model, a pickle, ...): off by default,
        # as such a load runs what the client sent with the server's rights.
        self.allow_code_upload = allow_code_upload
        self.load_models = list(load_models)
        self.strict_readiness = strict_readiness
        self.server_name = server_name
        self.repository_poll_secs = repository_poll_secs
        self.tracer = tracer or Tracer()
        self.logs = LOG_CONTROL
        self.tracer.log_requests(self.logs.debug)
        # Tenants, keys, limits and the audit trail (--auth-config); None: every caller is let in, as Triton.
        self.gateway = gateway
        # The one request pipeline: the core stages, then stages from installed plugins and the caller.
        self.pipeline = Pipeline(core_stages(self))
        # `--log-format json`: an access line per request, from the first stage (so refused requests have one too).
        if access_log:
            self.pipeline.insert(AccessLogStage(), before="resolve")
        # `--host-routing PATTERN`: the HTTP route table reads the Host, the `route` stage gRPC's :authority (first:
        # the stages after it see the model the request means).
        self.host_routing = HostRouting(host_routing) if host_routing else None
        if self.host_routing is not None:
            self.add_stage(RouteStage(self.host_routing))
        if gateway is not None:
            self.add_stage(AuthenticateStage(gateway, self._ready_versions))
            self.add_stage(FairShareStage())
        # Canary splits, weighted variants and shadows (models' `canary` / `shadow` parameters, Seldon predictors):
        # three dict reads per request for a name with no split. After `authenticate`: a tenant is granted the name
        # it asked for, whichever variant serves it.
        self.traffic = TrafficStage(self.manager, self)
        self.add_stage(self.traffic)
        # Triton's response cache (`--cache-config local,size=BYTES`), for models with `response_cache { enable:
        # true }`: the `cache` stage exists only when the server has a cache.
        self.response_cache = ResponseCache(response_cache_size) if response_cache_size > 0 else None
        if self.response_cache is not None:
            self.add_stage(CacheStage(self.response_cache))
        # KServe-style payload logging (`--payload-log URL|file:PATH`): the `payload_log` stage exists only then.
        self.payload_log = payload_log
        if payload_log is not None:
            self.add_stage(PayloadLogStage(payload_log))
        for stage in stages:
            self.add_stage(stage)
        # The `inferd.stages` entry points are read while the models load, and their stages added before the
        # server is live (in `start`; at once for a server built not started).
        self._stage_plugins: StagePlugins | None = StagePlugins()
        self._run = self.pipeline.run
        self._run_sync = self.pipeline.run_sync
        # Scale to zero with held requests, instance autoscaling, memory-aware eviction (scaling/): its `wake`
        # stage goes in (before `resolve`) once some model can scale to zero.
        self.scaling = Scaler(self.manager, self.add_stage, idle_unload_s=idle_unload_secs,
                              load_timeout_s=model_load_timeout_secs, held_limit=model_held_requests,
                              memory_limit=model_memory_limit)
        self._live = False
        self._draining = False  # shutting down: not ready, requests in flight still served
        self._closed = False
        self._stop_polling = threading.Event()
        self._poller: threading.Thread | None = None
        # SeldonDeployment / InferenceGraph files (`--deployment`), served as graphs once the models loaded, with
        # those of the repositories' deployments/ folders.
        self.deployment_files = [Path(p) for p in deployments]
        self.graphs: Deployments | None = None
        self._splits: set[str] = set()  # the names the deployments' predictors split (see _split_predictors)
        if start:
            self.start()
        else:
            self._add_plugin_stages()

    def add_stage(self, stage: Stage) -> None:
        """Add a stage to every request's pipeline, where its `before` or `after` attribute (a stage name) says;
        by default before `admit` (the model is known, the request not yet checked)."""
        self.pipeline.insert(stage, before=getattr(stage, "before", None), after=getattr(stage, "after", None))

    # ---- lifecycle ----

    def start(self) -> None:
        """Load the models the control mode asks for: all of them, or only `load_models` in explicit mode."""
        if self.model_control_mode == "explicit":
            names = None if "*" in self.load_models else self.load_models
            if names is None or names:
                self.scaling.load_all(names)
        else:
            self.scaling.load_all(None)
        self._serve_deployments()
        self._add_plugin_stages()
        self.scaling.start()
        if self.model_control_mode == "poll":
            self._poller = threading.Thread(target=self._poll, name="inferd-repository-poll", daemon=True)
            self._poller.start()
        self._live = True

    def _add_plugin_stages(self) -> None:
        plugins, self._stage_plugins = self._stage_plugins, None
        if plugins is not None:
            for stage in plugins.stages(self):
                self.add_stage(stage)

    def _serve_deployments(self) -> None:
        """The graphs of the deployment files (graph/deployments.py): after the models, whose names they use."""
        files = deployment_files(self.manager.repository.paths, self.deployment_files)
        if not files and self.graphs is None:
            return
        if self.graphs is None:
            from .graph.deployments import Deployments  # Seldon and KServe graphs: only when a file names one

            self.graphs = Deployments(self.manager)
        self.graphs.load_files(files)
        self._split_predictors()

    def _split_predictors(self) -> None:
        """Each SeldonDeployment with several predictors splits its name's requests between them by their
        `traffic` (normalised to 100 %; all alike when none has any) and copies them to its `shadow: true` ones;
        the split of a deployment that went (its file removed or changed) goes with it."""
        wanted: set[str] = set()
        for name, predictors in (self.graphs.predictors.items() if self.graphs is not None else ()):
            main = [p for p in predictors if not p.shadow]
            if len(predictors) < 2 or not main:
                continue
            total = sum(max(p.traffic, 0) for p in main)
            variants = [Variant(p.predictor, p.served_as, None,
                                100.0 * max(p.traffic, 0) / total if total else 100.0 / len(main)) for p in main]
            self.traffic.define(name, variants, [(p.served_as, "") for p in predictors if p.shadow])
            wanted.add(name)
        for name in self._splits - wanted:
            self.traffic.undefine(name)
        self._splits = wanted

    def _poll(self) -> None:
        while not self._stop_polling.wait(self.repository_poll_secs):
            try:
                self.manager.poll()
                self._serve_deployments()  # the graphs of deployment files that changed, came or went
            except Exception:  # a bad poll (a folder removed mid-scan) must not end polling
                log.exception("repository poll failed")

    def drain(self) -> None:
        """The first step of a shutdown: report not ready (HTTP /v2/health/ready 400, gRPC ServerReady false,
        grpc.health NOT_SERVING) so load balancers stop sending, while requests still run. `close` ends it."""
        if not self._draining:
            self._draining = True
            log.info("draining: reporting not ready")

    @property
    def draining(self) -> bool:
        return self._draining

    @staticmethod
    def terminate_instances(grace: float = 1.0) -> None:
        """The last step of a shutdown past its deadline: end every instance process still running (SIGTERM, then
        SIGKILL after `grace` s), so a hung model cannot keep the server from exiting."""
        from .instances.process import terminate_all

        terminate_all(grace=grace)

    def close(self, timeout: float | None = None) -> None:
        """Stop polling, retire every model (waiting for its requests in flight), free the rest. With `timeout`,
        all the waiting together ends after `timeout` s; without, each model waits up to its unload timeout.
        A second call does nothing (until `start` again)."""
        if self._closed and not self._live:
            return
        self._closed = True
        deadline = None if timeout is None else time.monotonic() + timeout
        self._live = False
        self._draining = False  # not ready all the same: not live
        self.scaling.close()
        self._stop_polling.set()
        if self._poller is not None:
            poll_wait = self.repository_poll_secs + 5
            self._poller.join(timeout=poll_wait if deadline is None else max(0.0, deadline - time.monotonic()))
        self.manager.close(None if deadline is None else max(0.0, deadline - time.monotonic()))
        if self.graphs is not None:
            self.graphs.close()  # after the models: the Seldon classes its nodes served are released
        self.tracer.close()
        if self.payload_log is not None:
            self.payload_log.close()  # after the models: every answered request is queued
        self.shared_memory.close()  # after the models: no request uses a region any more
        if self.gateway is not None:
            self.gateway.close()  # the audit trail flushed: every answered call is recorded

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- health and metadata ----

    def live(self) -> bool:
        return self._live

    def ready(self) -> bool:
        """Ready to serve: with strict readiness, only when every model loaded; otherwise once started."""
        if not self._live or self._draining:
            return False
        return self.manager.all_ready() if self.strict_readiness else True

    def metadata(self) -> dict[str, Any]:
        extensions = list(EXTENSIONS)
        if self.shared_memory.enabled:
            extensions.append("system_shared_memory")
        return {"name": self.server_name, "version": __version__, "extensions": extensions}

    def model(self, name: str, version: str = "") -> ServedModel:
        return self.manager.get(name, version)

    def version_states(self, name: str) -> tuple[dict[int, tuple[str, str]], str] | None:
        """A known model's versions (number -> (state, reason)) and why the model as a whole is unavailable ("" if
        it is not); None for a name the server does not know."""
        entry = self.manager.entry(name)
        if entry is None:
            return None
        states = {number: (status.state.value, status.reason) for number, status in list(entry.versions.items())}
        return states, entry.reason

    def _ready_versions(self, name: str) -> list[str]:
        """The ready versions of a model, newest first."""
        entry = self.manager.entry(name)
        return [] if entry is None else [m.version_str for m in entry.ready]

    def model_ready(self, name: str, version: str = "") -> bool:
        return self.manager.is_ready(name, version)

    def model_metadata(self, name: str, version: str = "") -> dict[str, Any]:
        served = self.manager.get(name, version)
        entry = self.manager.entry(name)
        versions = [m.version_str for m in reversed(entry.ready)] if entry else [served.version_str]
        return served.metadata(versions)

    def model_config(self, name: str, version: str = "") -> ModelConfig:
        return self.manager.get(name, version).config

    def model_config_json(self, name: str, version: str = "") -> dict[str, Any]:
        return config_to_json(self.model_config(name, version))

    def statistics(self, name: str = "", version: str = "") -> dict[str, Any]:
        """Triton's statistics extension: every loaded version, or one model's (one version's) statistics."""
        if not name:
            if version:
                raise InferError.invalid("a model version was given without a model name")
            models = self.manager.served()
        elif version:
            models = [self.manager.get(name, version)]
        else:
            self.manager.get(name)  # NOT_FOUND for unknown models
            entry = self.manager.entry(name)
            models = list(reversed(entry.ready)) if entry else []
        return {"model_stats": [m.stats.to_json() for m in sorted(models, key=lambda m: (m.name, m.version))]}

    @property
    def metrics_collectors(self) -> list[Any]:
        """Prometheus collectors of the server's own (traffic splits, tenants) served next to the model metrics."""
        collectors: list[Any] = [self.traffic.metrics, self.scaling.metrics]
        if self.gateway is not None:
            collectors.append(self.gateway.metrics)
        if self.response_cache is not None:
            collectors.append(CacheMetrics(self.response_cache))
        if self.payload_log is not None:
            collectors.append(self.payload_log.metrics)
        return collectors

    def model_statistics(self) -> list[ModelStatistics]:
        """The live statistics objects (what Prometheus metrics are computed from)."""
        return [m.stats for m in self.manager.served()]

    # ---- repository ----

    def repository_index(self, ready_only: bool = False) -> list[dict[str, Any]]:
        """Triton's index rows, with each model's measured memory (`memory_bytes`: 0 while scaled to zero)."""
        rows: list[dict[str, Any]] = list(self.manager.index())
        for row in rows:
            if "state" in row:
                row["memory_bytes"] = self.scaling.memory_of(row["name"])
        return [r for r in rows if r.get("state") == "READY"] if ready_only else rows

    def load(self, name: str, config: ModelConfig | str | Mapping[str, Any] | None = None,
             files: Mapping[str, bytes] | None = None) -> None:
        """Load or reload a model; `config` overrides its config.pbtxt (a ModelConfig, or JSON text/dict);
        `files` (path relative to the model folder, e.g. "1/model.onnx" -> content) replace the model's folder."""
        self._check_explicit()
        if self.graphs is not None and not config and not files and self.graphs.reload(name):
            self._split_predictors()
            return  # a graph of a deployment file: built again from its file
        if config is not None and not isinstance(config, ModelConfig):
            try:
                config = config_from_json(dict(config) if isinstance(config, Mapping) else config)
            except ConfigError as exc:
                raise InferError.invalid(str(exc)) from None
        if files and not self.allow_code_upload:
            reason = uploaded_code(config, files)
            if reason:
                raise InferError(ErrorKind.PERMISSION_DENIED,
                                 f"failed to load '{name}': {reason}, which runs code sent with the request; the "
                                 "server refuses uploaded code unless started with --allow-code-upload")
        self.manager.load(name, config, files)
        release_freed_memory()  # what loading freed again (the model file read, its graph before optimising)

    def unload(self, name: str) -> None:
        self._check_explicit()
        self.manager.unload(name)
        release_freed_memory()  # the C heap keeps what the model freed unless told to give it back

    def _check_explicit(self) -> None:
        if self.model_control_mode != "explicit":
            raise InferError.unavailable("explicit model load / unload is not allowed if polling is enabled "
                                         "or model control mode is none")

    # ---- trace and log settings (Triton's trace and logging extensions) ----

    def trace_settings(self, model_name: str = "") -> dict[str, Any]:
        """The trace settings in force, globally or for one model (Triton's form: strings and string lists)."""
        self._check_traced_model(model_name)
        return self.tracer.settings(model_name)

    def update_trace_settings(self, settings: Mapping[str, Any], model_name: str = "") -> dict[str, Any]:
        """Change trace settings (see `Tracer.update`); returns the settings now in force."""
        self._check_traced_model(model_name)
        return self.tracer.update(settings, model_name)

    def _check_traced_model(self, model_name: str) -> None:
        if model_name and not self.manager.is_ready(model_name):
            raise InferError.invalid(f"Request for unknown model : {model_name}")

    def log_settings(self) -> dict[str, Any]:
        return self.logs.settings()

    def update_log_settings(self, settings: Mapping[str, Any]) -> dict[str, Any]:
        """Change log settings (see `LogControl.update`); verbose logging adds a debug line per request."""
        current = self.logs.update(settings)
        self.tracer.log_requests(self.logs.debug)
        return current

    # ---- inference: every request of every protocol goes through the one pipeline ----

    async def infer_request(self, request: InferenceRequest, context: RequestContext = SDK) -> InferenceResponse:
        """Run one request through the pipeline (the front doors' entry point). Raises InferError."""
        return await self._run(request, context)

    def infer_request_sync(self, request: InferenceRequest, context: RequestContext = SDK) -> InferenceResponse:
        """The same pipeline on the caller's thread (no event loop needed)."""
        return self._run_sync(request, context)

    def _run_bls(self, caller: tuple[str, str], call: BlsRequest) -> dict[str, np.ndarray]:
        """A Python model's BLS request (see instances/bls.py), run as any request is, on the calling thread."""
        version = call.model_version if call.model_version not in ("", "-1") else ""
        if call.model_name == caller[0]:
            target = self.manager.get(call.model_name, version)
            if target.version_str == caller[1] and len(target.scheduler.pool.instances) == 1:
                raise InferError.unavailable(
                    f"model '{caller[0]}' version {caller[1]} has one instance, which is running this call: a BLS "
                    "request to itself would wait for itself forever (give it more instances)")
        datatypes = {name: datatype_of(array) for name, array in call.inputs.items()}
        outputs = [RequestedOutput(name) for name in call.outputs] if call.outputs else None
        parameters: dict[str, Any] = {"timeout": call.timeout_us} if call.timeout_us > 0 else {}
        request = InferenceRequest(call.model_name, dict(call.inputs), datatypes, version, "", outputs, parameters)
        return self._run_sync(request, _BLS).outputs

    def infer(self, model_name: str, inputs: Mapping[str, Any], *, version: str = "",
              outputs: Iterable[str] | None = None, request_id: str = "") -> InferenceResponse:
        """Run the model on numpy inputs (anything `np.asarray` takes) and return its outputs."""
        return self._run_sync(build_request(model_name, inputs, version, outputs, request_id), SDK)

    async def infer_async(self, model_name: str, inputs: Mapping[str, Any], *, version: str = "",
                          outputs: Iterable[str] | None = None, request_id: str = "") -> InferenceResponse:
        return await self._run(build_request(model_name, inputs, version, outputs, request_id), SDK)


_BLS = RequestContext("bls")


def uploaded_code(config: ModelConfig | None, files: Mapping[str, bytes]) -> str:
    """Why loading these uploaded files (path in the model folder -> content) would run code, or "" if it would
    not: a file that is code by its name, or a backend that runs its files (named by the config, or found by the
    files as the manager finds it)."""
    for path in files:
        base = path.replace("\\", "/").rpartition("/")[2]
        if base in CODE_FILENAMES or base.lower().endswith(CODE_SUFFIXES):
            return f"the file '{path}' is code"
    if config is None and CONFIG_FILENAME in files:
        try:
            config = parse_config(files[CONFIG_FILENAME].decode("utf-8"))
        except (ConfigError, UnicodeDecodeError):
            config = None  # the load fails on it anyway, before any backend runs
    config = config or ModelConfig()
    backend = _backend_of_upload(config, files)
    if backend and backend not in DATA_BACKENDS:
        return f"backend '{backend}'"
    return ""


def _backend_of_upload(config: ModelConfig, files: Mapping[str, bytes]) -> str:
    """The backend the manager will pick for an uploaded folder ("" when none fits: the load fails)."""
    # What the version folders hold: "1/model.savedmodel/saved_model.pb" holds "model.savedmodel".
    present = set()
    for path in files:
        parts = path.replace("\\", "/").split("/")
        if len(parts) >= 2 and parts[0].isdigit():
            present.add(parts[1])
    try:
        return backend_for(config, present.__contains__)
    except ConfigError:
        return ""


def core_stages(server: Server) -> list[Stage]:
    """The stages every request passes, in order, before any added one."""
    return [ResolveStage(server.manager.get), AccountStage(server.tracer),
            AdmitStage(server.limits, server.shared_memory), ScheduleStage(), RespondStage()]


def build_request(model_name: str, inputs: Mapping[str, Any], version: str = "",
                  outputs: Iterable[str] | None = None, request_id: str = "") -> InferenceRequest:
    arrays: dict[str, np.ndarray] = {}
    datatypes: dict[str, str] = {}
    for name, value in inputs.items():
        array = np.asarray(value)
        if array.dtype.kind in "SU":  # BYTES tensors are object arrays of bytes
            array = np.array([v.encode() if isinstance(v, str) else bytes(v) for v in array.flat],
                             dtype=object).reshape(array.shape)
        arrays[name] = array
        datatypes[name] = datatype_of(array)
    requested = [RequestedOutput(n) for n in outputs] if outputs is not None else None
    return InferenceRequest(model_name, arrays, datatypes, str(version), request_id, requested)
