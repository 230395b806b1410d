"""Measuring one point: load the candidate config through the server's repository API, then run `inferd bench`'s
load generator (closed loop, one step per concurrency) against it, and read the server's memory."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Sequence
from dataclasses import replace
from itertools import groupby
from typing import Any

from ...client import BenchError, BenchOptions, benchmark
from ...client._loadgen import Target
from ..errors import ToolError
from .search import Measurement
from .space import Point, ServerConfig

WARM_SHARE = 0.25  # of a probe's length, run unmeasured before the probes of a newly loaded config


class RepositoryClient:
    """The repository and config calls analyze makes (tritonclient's synchronous client of the protocol)."""

    def __init__(self, target: Target) -> None:
        self.target = target
        try:
            if target.protocol == "http":
                import tritonclient.http as module
            else:
                import tritonclient.grpc as module
        except (ImportError, RuntimeError) as exc:
            raise ToolError(f"needs tritonclient[{target.protocol}] ({exc}): pip install 'inferd[bench]'") from None
        self._module: Any = module
        self._client: Any = module.InferenceServerClient(target.url, ssl=target.ssl)

    def load(self, config: dict[str, Any] | None = None) -> None:
        """Load (or reload) the model, with `config` replacing its config.pbtxt; ToolError with the server's
        message when it refuses."""
        try:
            self._client.load_model(self.target.model, config=None if config is None else json.dumps(config))
        except Exception as exc:  # tritonclient's InferenceServerException, or a connection error
            raise ToolError(f"cannot load '{self.target.model}' on {self.target.url}: {exc}") from None

    def config(self) -> dict[str, Any]:
        try:
            if self.target.protocol == "http":
                return dict(self._client.get_model_config(self.target.model))
            return dict(self._client.get_model_config(self.target.model, as_json=True).get("config", {}))
        except Exception as exc:
            raise ToolError(f"cannot read the config of '{self.target.model}' on {self.target.url}: {exc}") from None

    def close(self) -> None:
        self._client.close()


class Prober:
    """Measures points; consecutive points of one server config share one load."""

    def __init__(self, target: Target, repository: RepositoryClient, base: dict[str, Any],
                 memory: Callable[[], float | None]) -> None:
        self.target = target
        self.repository = repository
        self.base = base
        self.memory = memory
        self.loaded: ServerConfig | None = None
        self.loads = 0

    def __call__(self, points: Sequence[Point], seconds: float) -> list[Measurement]:
        results: list[Measurement] = []
        for config, group in groupby(points, key=lambda p: p.config):
            results += self._measure(config, list(group), seconds)
        return results

    def _measure(self, config: ServerConfig, points: list[Point], seconds: float) -> list[Measurement]:
        if config != self.loaded:
            try:
                self.repository.load(config.apply(self.base))
            except ToolError:
                self.loaded = None
                return [Measurement(p, 0.0, float("nan"), 1, 0.0) for p in points]
            self.loaded = config
            self.loads += 1
        options = BenchOptions(target=self.target, mode="concurrency", steps=tuple(p.concurrency for p in points),
                               duration_s=seconds, progress=False, show_histogram=False)
        # A fresh load's first runs are slow (thread pools, memory arenas): a short unmeasured step first.
        warm = replace(options, steps=(max(options.steps),), duration_s=seconds * WARM_SHARE)
        try:
            benchmark(warm, out=io.StringIO(), err=io.StringIO())
            steps = benchmark(options, out=io.StringIO(), err=io.StringIO())
        except BenchError:
            return [Measurement(p, 0.0, float("nan"), 1, 0.0) for p in points]
        rss = self.memory()
        return [Measurement(p, s.infer_per_s, s.latency_ms("p99"), s.errors, s.elapsed_s, rss)
                for p, s in zip(points, steps, strict=True)]


def server_memory(url: str) -> Callable[[], float | None]:
    """The resident memory (MB) of the server listening at `url` and its child processes, when it runs on this
    host and psutil can see it; else a function that answers None (memory is then not a constraint)."""
    host, _, port = url.rpartition(":")
    if host.strip("[]") not in ("localhost", "127.0.0.1", "::1", "0.0.0.0") or not port.isdigit():
        return lambda: None
    try:
        import psutil
    except ImportError:
        return lambda: None
    try:
        pids = {c.pid for c in psutil.net_connections(kind="tcp")
                if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == int(port) and c.pid}
    except (psutil.Error, OSError):
        return lambda: None
    if len(pids) != 1:
        return lambda: None
    process = psutil.Process(pids.pop())

    def rss_mb() -> float | None:
        try:
            family = [process, *process.children(recursive=True)]
            return sum(p.memory_info().rss for p in family) / 2**20
        except psutil.Error:
            return None

    return rss_mb
