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

from . import __version__
from .config import ConfigError, ModelConfig, config_from_json, config_to_json
from .manager import ModelManager
from .model import ServedModel
from .observability import FailureReason, ModelStatistics
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
        start: bool = True,
    ) -> None:
        paths = [model_repository] if isinstance(model_repository, (str, Path)) else list(model_repository)
        if model_control_mode not in CONTROL_MODES:
            raise ValueError(f"model_control_mode must be one of {', '.join(CONTROL_MODES)}")
        self.manager = ModelManager(ModelRepository(paths), autocomplete=autocomplete)
        self.model_control_mode = model_control_mode
        self.load_models = list(load_models)
        self.strict_readiness = strict_readiness
        self.server_name = server_name
        self.repository_poll_secs = repository_poll_secs
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
        return {"name": self.server_name, "version": __version__, "extensions": list(EXTENSIONS)}

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

    # ---- inference ----

    async def infer_request(self, request: InferenceRequest) -> InferenceResponse:
        """Run one request (the frontends' entry point). Raises InferError."""
        start = time.perf_counter_ns()
        model = self.manager.get(request.model_name, request.model_version)
        stats = model.stats
        stats.enter()
        try:
            job, names = self._admit(model, request)
            results = await model.scheduler.run(job)
            response = self._respond(request, model, results, names, job.rows)
        except asyncio.CancelledError:
            stats.record_request(time.perf_counter_ns() - start, FailureReason.CANCELED)
            raise
        except Exception as exc:
            error, reason = _classify(model, exc)
            stats.record_request(time.perf_counter_ns() - start, reason)
            raise error from None
        stats.record_request(time.perf_counter_ns() - start)
        return response

    def infer_request_sync(self, request: InferenceRequest) -> InferenceResponse:
        start = time.perf_counter_ns()
        model = self.manager.get(request.model_name, request.model_version)
        stats = model.stats
        stats.enter()
        try:
            job, names = self._admit(model, request)
            results = model.scheduler.run_sync(job)
            response = self._respond(request, model, results, names, job.rows)
        except Exception as exc:
            error, reason = _classify(model, exc)
            stats.record_request(time.perf_counter_ns() - start, reason)
            raise error from None
        stats.record_request(time.perf_counter_ns() - start)
        return response

    @staticmethod
    def _admit(model: ServedModel, request: InferenceRequest) -> tuple[Job, list[str]]:
        feeds, rows = model.check_inputs(request)
        names = model.check_outputs(request)
        params = request.parameters
        if params:
            job = model.scheduler.make_job(feeds, rows, _int_param(params, "priority"), _int_param(params, "timeout"))
        else:
            job = model.scheduler.make_job(feeds, rows, 0, 0)
        return job, names

    @staticmethod
    def _respond(request: InferenceRequest, model: ServedModel, results: dict[str, np.ndarray],
                 names: list[str], batch: int) -> InferenceResponse:
        outputs = model.shape_outputs(results, names, batch)
        return InferenceResponse(model.name, model.version_str, outputs, request.id)

    def infer(self, model_name: str, inputs: Mapping[str, Any], *, version: str = "",
              outputs: Iterable[str] | None = None, request_id: str = "") -> InferenceResponse:
        """Run the model on numpy inputs (anything `np.asarray` takes) and return its outputs."""
        return self.infer_request_sync(build_request(model_name, inputs, version, outputs, request_id))

    async def infer_async(self, model_name: str, inputs: Mapping[str, Any], *, version: str = "",
                          outputs: Iterable[str] | None = None, request_id: str = "") -> InferenceResponse:
        return await self.infer_request(build_request(model_name, inputs, version, outputs, request_id))


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
