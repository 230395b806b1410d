"""`inferd analyze`: search the config that serves a model fastest within a latency budget, on a live server in
explicit model control mode, and write it."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TextIO

from google.protobuf import text_format

from ...client._loadgen import Target
from ...client.bench import DEFAULT_PORTS
from ...config import ConfigError, config_from_json
from ..errors import FAILED, ToolError
from .probe import Prober, RepositoryClient, server_memory
from .report import pareto, plot, table
from .search import Limits, Measurement, SearchResult, brute_force, coordinate_descent
from .space import Grid, build_grid

DEFAULT_MAX_INSTANCES = 2
DEFAULT_PROBE_S = 1.0


@dataclass(frozen=True)
class AnalyzeOptions:
    target: Target
    limits: Limits = field(default_factory=Limits)
    max_instances: int = DEFAULT_MAX_INSTANCES
    probe_s: float = DEFAULT_PROBE_S
    search: Literal["quick", "brute"] = "quick"
    output: Path | None = None
    plot: Path | None = None


@dataclass(frozen=True)
class AnalyzeResult:
    grid: Grid
    search: SearchResult
    measured: list[Measurement]  # one per point: its confirmation when it had one, else its probe
    front: list[Measurement]
    best_config: dict[str, Any] | None  # JSON form
    loads: int  # configs loaded on the server


def options_from_args(args: argparse.Namespace) -> AnalyzeOptions:
    url = args.url or f"localhost:{DEFAULT_PORTS[args.protocol]}"
    ssl = url.startswith(("https://", "grpcs://"))
    url = url.split("://", 1)[-1].rstrip("/")
    return AnalyzeOptions(
        target=Target(protocol=args.protocol, url=url, model=args.model_name, ssl=ssl),
        limits=Limits(args.latency_budget_ms, args.max_memory_mb), max_instances=args.max_instances,
        probe_s=args.probe_seconds, search=args.search, output=args.output, plot=args.plot)


def _check(options: AnalyzeOptions) -> None:
    if options.max_instances < 1:
        raise ToolError("--max-instances must be at least 1")
    if options.probe_s <= 0:
        raise ToolError("--probe-seconds must be positive")
    budget = options.limits.latency_budget_ms
    if budget is not None and budget <= 0:
        raise ToolError("--latency-budget-ms must be positive")
    if options.plot is not None and options.plot.suffix.lower() not in (".png", ".svg"):
        raise ToolError(f"--plot {options.plot}: the file must end in .png or .svg")


def analyze(options: AnalyzeOptions, out: TextIO | None = None) -> AnalyzeResult:
    out = out or sys.stdout
    _check(options)
    repository = RepositoryClient(options.target)
    try:
        repository.load()  # with the repository's own config: the baseline, and a check of explicit mode
        base = repository.config()
        grid = build_grid(base, options.max_instances)
        start = grid.start(base)
        prober = Prober(options.target, repository, base, server_memory(options.target.url))
        print(f"analyzing '{options.target.model}' on {options.target.url} ({options.search} search over "
              f"{len(grid.points())} grid points, {options.probe_s:g} s each)", file=out, flush=True)
        if options.search == "brute":
            found = brute_force(grid, prober, options.probe_s, options.limits)
            found.start = next((m for m in found.probes if m.point == start), None)
        else:
            found = coordinate_descent(grid, start, prober, options.probe_s, options.limits)
        best_config = found.best.point.config.apply(base) if found.best is not None else None
        repository.load(best_config if best_config is not None else base)
    finally:
        repository.close()
    confirmed = {m.point: m for m in found.confirmed}  # a finalist's longer measurement stands for its probe
    measured = [confirmed.pop(m.point, m) for m in found.probes] + list(confirmed.values())
    front = pareto(measured, options.limits)
    result = AnalyzeResult(grid, found, measured, front, best_config, prober.loads)
    _report(result, options, out)
    if options.plot is not None:
        plot(options.plot, measured, front, found.best, options.limits)
        print(f"wrote {options.plot}", file=out)
    return result


def config_text(config: dict[str, Any]) -> str:
    try:
        return text_format.MessageToString(config_from_json(config))
    except ConfigError as exc:
        raise ToolError(f"the server's config of the model does not read back: {exc}") from None


def _report(result: AnalyzeResult, options: AnalyzeOptions, out: TextIO) -> None:
    found = result.search
    print(f"\nmeasured {len(found.probes)} point(s) and confirmed {len(found.confirmed)} in {found.seconds:.1f} s "
          f"({result.loads} config loads)", file=out)
    print("\nPareto set (throughput against p99; * the best):", file=out)
    print(table(result.front, found.best) if result.front else "  (no point met the constraints)", file=out)
    if found.start is not None:
        print(f"\nmodel's own config: {found.start.throughput:.1f} infer/s, p99 {found.start.p99_ms:.2f} ms "
              f"({found.start.point.label()})", file=out)
    if found.best is None or result.best_config is None:
        budget = options.limits.latency_budget_ms
        print("no config met the constraints" + (f" (p99 within {budget:g} ms)" if budget else ""), file=out)
        return
    best = found.best
    print(f"best: {best.throughput:.1f} infer/s, p99 {best.p99_ms:.2f} ms ({best.point.label()}); clients reach "
          f"it with {best.point.concurrency} request(s) in flight", file=out)
    text = config_text(result.best_config)
    if options.output is not None:
        options.output.parent.mkdir(parents=True, exist_ok=True)
        options.output.write_text(text)
        print(f"wrote {options.output}", file=out)
    else:
        print(f"\n{text}", file=out)


def run_analyze(options: AnalyzeOptions, out: TextIO | None = None) -> int:
    """The command: 0 with a config found, 1 when none met the constraints, 2 when it could not run."""
    try:
        result = analyze(options, out)
    except ToolError as exc:
        print(f"inferd analyze: {exc}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:
        print("inferd analyze: interrupted", file=sys.stderr)
        return 130
    return 0 if result.best_config is not None else FAILED


