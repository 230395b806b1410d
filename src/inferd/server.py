"""The in-process SDK: the whole data plane as a library, no sockets. Network frontends are built on it."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ._version import __version__
from .config import ConfigError, ModelConfig, config_from_json, config_to_json
from .instances.bls import BlsRequest
from .instances.environments import EnvironmentCache
from .limits import DEFAULT_MAX_INPUTS, DEFAULT_MAX_TENSOR_ELEMENTS, RequestLimits
from .manager import ModelManager
from .memory import (
    SHM_BYTE_SIZE,
    SHM_OFFSET,
    SHM_REGION,
    CudaSharedMemory,
    SharedMemoryLease,
    SystemSharedMemory,
    shared_memory_ref,
)
from .model import ServedModel
from .observability import LOG_CONTROL, FailureReason, ModelStatistics, Tracer
from .repository import ModelRepository
from .scheduling import BackendFailure, Job
from .types import ErrorKind, InferenceRequest, InferenceResponse, InferError, RequestedOutput, datatype_of

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
        allow_client_shm: bool = True,
        max_tensor_elements: int = DEFAULT_MAX_TENSOR_ELEMENTS,
        max_inputs: int = DEFAULT_MAX_INPUTS,
        model_env_dir: str | Path | None = None,
        start: bool = True,
    ) -> None:
        paths = [model_repository] if isinstance(model_repository, (str, Path)) else list(model_repository)
        if model_control_mode not in CONTROL_MODES:
            raise ValueError(f"model_control_mode must be one of {', '.join(CONTROL_MODES)}")
        self.limits = RequestLimits(max_tensor_elements, max_inputs)
        # Client memory (Triton's shared-memory extensions), shared by every frontend.
        self.shared_memory = SystemSharedMemory(enabled=allow_client_shm)
        self.cuda_shared_memory = CudaSharedMemory()
        # model_env_dir: where the Python environments of models' requirements.txt are cached.
        environments = EnvironmentCache(model_env_dir) if model_env_dir is not None else None
        self.manager = ModelManager(ModelRepository(paths), autocomplete=autocomplete, environments=environments)
        self.manager.bls = self._run_bls  # Python models' calls of other models go through this core
        self.model_control_mode = model_control_mode
        self.load_models = list(load_models)
        self.strict_readiness = strict_readiness
        self.server_name = server_name
        self.repository_poll_secs = repository_poll_secs
        self.tracer = tracer or Tracer()
        self.logs = LOG_CONTROL
        self.tracer.log_requests(self.logs.debug)
        self._live = False
        self._stop_polling = threading.Event()
        self._poller: threading.Thread | None = None
        if start:
            self.start()

    # ---- lifecycle ----

    def start(self) -> None:
        """Load the models the control mode asks for: all of them, or only `load_models` in explicit mode."""
        if self.model_control_mode == "explicit":
            names = None if "*" in self.load_models else self.load_models
            if names is None or names:
                self.manager.load_all(names)
        else:
            self.manager.load_all()
        if self.model_control_mode == "poll":
            self._poller = threading.Thread(target=self._poll, name="inferd-repository-poll", daemon=True)
            self._poller.start()
        self._live = True

    def _poll(self) -> None:
        while not self._stop_polling.wait(self.repository_poll_secs):
            try:
                self.manager.poll()
            except Exception:  # a bad poll (a folder removed mid-scan) must not end polling
                log.exception("repository poll failed")

    def close(self) -> None:
        self._live = False
        self._stop_polling.set()
        if self._poller is not None:
            self._poller.join(timeout=self.repository_poll_secs + 5)
        self.manager.close()
        self.tracer.close()
        self.shared_memory.close()  # after the models: no request uses a region any more

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- health and metadata ----

    def live(self) -> bool:
        return self._live

    def ready(self) -> bool:
        """Ready to serve: with strict readiness, only when every model loaded; otherwise once started."""
        if not self._live:
            return False
        return self.manager.all_ready() if self.strict_readiness else True

    def metadata(self) -> dict[str, Any]:
        extensions = list(EXTENSIONS)
        if self.shared_memory.enabled:
            extensions.append("system_shared_memory")
        return {"name": self.server_name, "version": __version__, "extensions": extensions}

    def model(self, name: str, version: str = "") -> ServedModel:
        return self.manager.get(name, version)

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

    def model_statistics(self) -> list[ModelStatistics]:
        """The live statistics objects (what Prometheus metrics are computed from)."""
        return [m.stats for m in self.manager.served()]

    # ---- repository ----

    def repository_index(self, ready_only: bool = False) -> list[dict[str, str]]:
        rows = self.manager.index()
        return [r for r in rows if r.get("state") == "READY"] if ready_only else rows

    def load(self, name: str, config: ModelConfig | str | Mapping[str, Any] | None = None,
             files: Mapping[str, bytes] | None = None) -> None:
        """Load or reload a model; `config` overrides its config.pbtxt (a ModelConfig, or JSON text/dict);
        `files` (path relative to the model folder, e.g. "1/model.onnx" -> content) replace the model's folder."""
        self._check_explicit()
        if config is not None and not isinstance(config, ModelConfig):
            try:
                config = config_from_json(dict(config) if isinstance(config, Mapping) else config)
            except ConfigError as exc:
                raise InferError.invalid(str(exc)) from None
        self.manager.load(name, config, files)

    def unload(self, name: str) -> None:
        self._check_explicit()
        self.manager.unload(name)

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

    # ---- inference ----

    async def infer_request(self, request: InferenceRequest) -> InferenceResponse:
        """Run one request (the frontends' entry point). Raises InferError."""
        start = time.perf_counter_ns()
        model = self.manager.get(request.model_name, request.model_version)
        call = _Call(self.tracer, model, request.id, start)
        try:
            job, call.admitted = self._admit(model, request)
            job.trace = call.trace
            results = await model.scheduler.run(job)
            response = self._respond(request, model, results, call.admitted, job.rows)
        except asyncio.CancelledError as exc:
            call.cancelled(exc)
            raise
        except Exception as exc:
            error = call.failed(exc)
            try:
                raise error from None
            finally:
                del error  # no frame-traceback cycle: a failed request's tensors go now, not at the next GC
        finally:
            call.release()
        call.succeeded()
        return response

    def infer_request_sync(self, request: InferenceRequest) -> InferenceResponse:
        start = time.perf_counter_ns()
        model = self.manager.get(request.model_name, request.model_version)
        call = _Call(self.tracer, model, request.id, start)
        try:
            job, call.admitted = self._admit(model, request)
            job.trace = call.trace
            results = model.scheduler.run_sync(job)
            response = self._respond(request, model, results, call.admitted, job.rows)
        except Exception as exc:
            error = call.failed(exc)
            try:
                raise error from None
            finally:
                del error
        finally:
            call.release()
        call.succeeded()
        return response

    def _run_bls(self, caller: tuple[str, str], call: BlsRequest) -> dict[str, np.ndarray]:
        """A Python model's BLS request (see scheduling/bls.py), run as any request is, on the calling thread."""
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
        return self.infer_request_sync(request).outputs

    def _admit(self, model: ServedModel, request: InferenceRequest) -> tuple[Job, _Admitted]:
        self._check_limits(request)
        lease = self._bind_shared_memory(request) if _uses_shared_memory(request) else None
        try:
            feeds, rows = model.check_inputs(request)
            names = model.check_outputs(request)
            classes = model.classifications(request) if request.outputs else {}
            params = request.parameters
            if params:
                job = model.scheduler.make_job(feeds, rows, _int_param(params, "priority"),
                                               _int_param(params, "timeout"))
            else:
                job = model.scheduler.make_job(feeds, rows, 0, 0)
        except BaseException:
            if lease is not None:
                lease.release()
            raise
        return job, _Admitted(names, classes, lease)

    def _check_limits(self, request: InferenceRequest) -> None:
        """The request limits, for requests built in-process (frontends check them before decoding)."""
        limits = self.limits
        limits.check_input_count(len(request.inputs) + len(request.shared_inputs))
        for name, array in request.inputs.items():
            limits.check_count(name, array.size)
        for name, (shape, _) in request.shared_inputs.items():
            limits.check_elements(name, shape)

    def _bind_shared_memory(self, request: InferenceRequest) -> SharedMemoryLease:
        """Hold the regions the request names: its shared inputs become views of them, its placed outputs are
        checked before the model runs."""
        lease = SharedMemoryLease(self.shared_memory)
        try:
            for name, (shape, ref) in request.shared_inputs.items():
                if name in request.inputs:
                    raise InferError.invalid(f"input '{name}' is given more than once")
                request.inputs[name] = lease.read_input(name, request.datatypes.get(name, ""), shape, ref)
            for out in request.outputs or ():
                placed = shared_memory_ref(f"output '{out.name}'", out.parameters) if out.parameters else None
                if placed is not None:
                    lease.place_output(out.name, placed)
        except BaseException:
            lease.release()
            raise
        return lease

    @staticmethod
    def _respond(request: InferenceRequest, model: ServedModel, results: dict[str, np.ndarray],
                 admitted: _Admitted, batch: int) -> InferenceResponse:
        outputs = model.shape_outputs(results, admitted.names, batch)
        if admitted.classes:
            model.classify(outputs, admitted.classes)
        response = InferenceResponse(model.name, model.version_str, outputs, request.id)
        if admitted.lease is not None:
            response.shared_outputs = admitted.lease.finish(outputs)
        return response

    def infer(self, model_name: str, inputs: Mapping[str, Any], *, version: str = "",
              outputs: Iterable[str] | None = None, request_id: str = "") -> InferenceResponse:
        """Run the model on numpy inputs (anything `np.asarray` takes) and return its outputs."""
        return self.infer_request_sync(build_request(model_name, inputs, version, outputs, request_id))

    async def infer_async(self, model_name: str, inputs: Mapping[str, Any], *, version: str = "",
                          outputs: Iterable[str] | None = None, request_id: str = "") -> InferenceResponse:
        return await self.infer_request(build_request(model_name, inputs, version, outputs, request_id))


class _Call:
    """One request's bookkeeping, the same for the sync and async paths: statistics (pending count, outcome,
    duration), its trace if sampled, and the shared-memory regions it holds."""

    __slots__ = ("admitted", "model", "start", "trace", "tracer")

    def __init__(self, tracer: Tracer, model: ServedModel, request_id: str, start: int) -> None:
        self.tracer = tracer
        self.model = model
        self.start = start
        self.trace = tracer.begin(model.name, model.version, request_id, start) if tracer.enabled else None
        self.admitted: _Admitted | None = None
        model.stats.enter()

    def _end(self, reason: FailureReason | None, error: BaseException | None) -> None:
        now = time.perf_counter_ns()
        self.model.stats.record_request(now - self.start, reason)
        if self.trace is not None:
            self.tracer.end(self.trace, now, error)

    def succeeded(self) -> None:
        self._end(None, None)

    def cancelled(self, exc: BaseException) -> None:
        self._end(FailureReason.CANCELED, exc)

    def failed(self, exc: Exception) -> InferError:
        """The error the caller gets (see `_classify`), recorded under its failure reason."""
        error, reason = _classify(self.model, exc)
        self._end(reason, error)
        return error

    def release(self) -> None:
        if self.admitted is not None and self.admitted.lease is not None:
            self.admitted.lease.release()


class _Admitted:
    """What admitting a request decided beyond its job: the outputs to return, those to return as classes, and
    the shared-memory regions it holds."""

    __slots__ = ("classes", "lease", "names")

    def __init__(self, names: list[str], classes: dict[str, int], lease: SharedMemoryLease | None) -> None:
        self.names = names
        self.classes = classes
        self.lease = lease


_SHM_PARAMETERS = frozenset((SHM_REGION, SHM_OFFSET, SHM_BYTE_SIZE))


def _uses_shared_memory(request: InferenceRequest) -> bool:
    if request.shared_inputs:
        return True
    return any(out.parameters and not _SHM_PARAMETERS.isdisjoint(out.parameters) for out in request.outputs or ())


def _classify(model: ServedModel, exc: Exception) -> tuple[InferError, FailureReason]:
    """The error a failed request gets, and the reason it counts under in statistics and metrics."""
    if isinstance(exc, InferError):
        if exc.kind == ErrorKind.UNAVAILABLE:
            return exc, FailureReason.REJECTED
        if exc.kind == ErrorKind.INTERNAL:
            return exc, FailureReason.BACKEND
        return exc, FailureReason.OTHER
    if isinstance(exc, BackendFailure):
        return InferError.internal(f"model '{model.name}' failed: {exc}"), FailureReason.BACKEND
    return InferError.internal(f"model '{model.name}' failed: {type(exc).__name__}: {exc}"), FailureReason.OTHER


def _int_param(params: Mapping[str, Any], key: str) -> int:
    value = params.get(key, 0)
    if value is None or value == "":
        return 0
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise InferError.invalid(f"parameter '{key}' must be an integer")
    try:
        return int(value)
    except ValueError:
        raise InferError.invalid(f"parameter '{key}' must be an integer, got '{value}'") from None


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
