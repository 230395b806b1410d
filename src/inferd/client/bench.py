"""`inferd bench`: a load generator for any V2 (KServe / Triton) server, in the spirit of perf_analyzer and hey.

It reads the model's metadata and configuration, builds input tensors once (random, zero or from a perf_analyzer
data file), then runs one measurement step per concurrency (closed loop) or request rate (open loop) with
tritonclient's asyncio clients. After each step it prints a table (throughput, latency percentiles, errors and the
client's own CPU use) and hey's latency histogram; at the end a summary and, with `--csv`, one CSV row per step.

Every request a step sends is awaited and counted, failed ones included, so a step's request count equals the
server's statistics delta for the model: the number is checkable, not estimated.

    inferd bench -m simple                                   # HTTP, concurrency 1, 10 s
    inferd bench -m simple -i grpc --concurrency-range 1:16:x2 --duration 5 --csv out.csv
    inferd bench -m resnet50 -b 4 --request-rate 50 --processes 2
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import math
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TextIO

from ._inputs import InputSpec, TensorData, build_input_sets, input_specs, parse_shapes
from ._loadgen import BenchError, LoadClient, Mode, StepPlan, Target, new_event_loop
from ._report import ProgressBar, StepResult, histogram, merge_samples, step_table, summary_table, write_csv
from ._runners import LocalRunner, ProcessRunner, StepRunner
from ._shm import system_shared_memory

__all__ = [
    "BenchError", "BenchOptions", "add_bench_parser", "benchmark", "build_parser", "main", "options_from_args",
    "parse_range", "run_bench",
]

_DESCRIPTION = "Measure a model's throughput and latency on a running V2 (KServe / Triton) inference server."
DEFAULT_PORTS = {"http": 8000, "grpc": 8001}
_PROTOCOL_NAMES = {"http": "HTTP", "grpc": "gRPC"}
MAX_STEPS = 1000  # a typo such as 1:100000 should fail fast, not run for a day
_EXAMPLES = """\
ranges (perf_analyzer's syntax, plus two forms of our own):
  --concurrency-range 8           one step
  --concurrency-range 1:32:2      START:END:STEP adds STEP (1, 3, 5, ... 31), as perf_analyzer does
  --concurrency-range 1:32:x2     xFACTOR multiplies (1, 2, 4, 8, 16, 32)
  --concurrency-range 1,8,32      an explicit list

examples:
  inferd bench -m simple
  inferd bench -m simple -i grpc -u localhost:8001 --concurrency-range 1:16:x2 --duration 5 --csv steps.csv
  inferd bench -m mlp -b 8 --request-rate-range 100:400:100 --request-distribution poisson
  inferd bench -m my_model --shape INPUT0:3,224,224 --input-data data.json --processes 2

The exit status is 0 when every request succeeded, 1 when some failed or the benchmark could not start, and 2 for a
wrong command line.
"""


@dataclass(frozen=True)
class BenchOptions:
    """A validated `inferd bench` command line."""

    target: Target
    mode: Mode
    steps: tuple[float, ...]  # concurrencies or request rates, in order
    batch_size: int = 1
    duration_s: float = 10.0
    max_requests: int | None = None
    distribution: Literal["constant", "poisson"] = "constant"
    input_data: str = "random"
    shapes: tuple[tuple[str, tuple[int, ...]], ...] = ()
    string_length: int = 16
    shared_memory: Literal["none", "system"] = "none"
    processes: int = 1
    csv: Path | None = None
    progress: bool | None = None  # None: when stderr is a terminal
    show_histogram: bool = True
    seed: int = 0


# ---- command line ----

def add_bench_parser(subparsers: Any) -> None:
    """Register `bench` on an argparse sub-command set; `args.func(args)` then runs it."""
    parser = subparsers.add_parser(
        "bench", help="measure a model's throughput and latency on a running server",
        description=_DESCRIPTION, epilog=_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_bench_arguments(parser)
    parser.set_defaults(func=run_bench)


def build_parser() -> argparse.ArgumentParser:
    """A stand-alone parser, for `python -m inferd.client`."""
    parser = argparse.ArgumentParser(prog="inferd bench", description=_DESCRIPTION, epilog=_EXAMPLES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_bench_arguments(parser)
    parser.set_defaults(func=run_bench)
    return parser


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    """perf_analyzer's flag names where it has one (-m, -x, -u, -i, -b, --concurrency-range, --shape, ...)."""
    target = parser.add_argument_group("target")
    target.add_argument("-m", "--model-name", required=True, help="model to benchmark")
    target.add_argument("-x", "--model-version", default="", help="model version (default: the server's choice)")
    target.add_argument("-u", "--url", default=None,
                        help="server as host:port (http:// or https:// allowed; default localhost:8000 for HTTP, "
                        "localhost:8001 for gRPC)")
    target.add_argument("-i", "--protocol", type=str.lower, choices=["http", "grpc"], default="http",
                        help="protocol (default http)")
    target.add_argument("--request-timeout", type=float, default=60.0, metavar="SECONDS",
                        help="a request slower than this counts as an error (default 60)")

    load = parser.add_argument_group("load")
    kind = load.add_mutually_exclusive_group()
    kind.add_argument("--concurrency-range", metavar="RANGE",
                      help="closed loop: requests kept in flight; START[:END[:STEP|:xFACTOR]] or a list A,B,C "
                      "(default 1)")
    kind.add_argument("--request-rate-range", metavar="RANGE",
                      help="open loop: requests per second, same forms as --concurrency-range")
    kind.add_argument("--request-rate", type=float, metavar="N", help="open loop at one rate (requests/s)")
    load.add_argument("--request-distribution", choices=["constant", "poisson"], default="constant",
                      help="open loop: gaps between sends (default constant)")
    load.add_argument("--duration", type=float, default=10.0, metavar="SECONDS",
                      help="length of each step (default 10)")
    load.add_argument("--max-requests", type=int, default=None, metavar="N",
                      help="also end each step after N requests")
    load.add_argument("--processes", type=int, default=1, metavar="N",
                      help="spread the load over N client processes, when one process is the bottleneck")

    data = parser.add_argument_group("data")
    data.add_argument("-b", "--batch-size", type=int, default=1, help="batch size of each request (default 1)")
    data.add_argument("--input-data", default="random",
                      help="random, zero, or a perf_analyzer JSON file {\"data\": [{\"INPUT0\": [...]}, ...]}")
    data.add_argument("--shape", action="append", default=[], metavar="NAME:D1,D2",
                      help="dimensions of an input with variable ones, batch dimension excluded (repeatable)")
    data.add_argument("--string-length", type=int, default=16, help="length of random BYTES elements")
    encoding = data.add_mutually_exclusive_group()
    encoding.add_argument("--binary", dest="binary", action="store_true", default=True,
                          help="HTTP: tensors in the binary extension (default)")
    encoding.add_argument("--json", dest="binary", action="store_false", help="HTTP: tensors as JSON lists")
    data.add_argument("--shared-memory", choices=["none", "system"], default="none",
                      help="pass inputs in system shared memory (needs the server's shared-memory extension)")
    data.add_argument("--seed", type=int, default=0, help="seed of the random data and Poisson arrivals")

    output = parser.add_argument_group("output")
    output.add_argument("--csv", "-f", dest="csv", type=Path, default=None, metavar="PATH",
                        help="write one row per step to this CSV file")
    output.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="progress bar on stderr (default: when stderr is a terminal)")
    output.add_argument("--histogram", action=argparse.BooleanOptionalAction, default=True,
                        help="print a latency histogram after each step")


def parse_range(text: str, integer: bool = True) -> tuple[float, ...]:
    """A sweep: `8`, `1:32` (step 1), `1:32:2` (additive, perf_analyzer's meaning), `1:32:x2` (geometric), `1,8,32`.

    Values must be positive. Raises ValueError with a message for the command line.
    """
    convert = int if integer else float
    text = text.strip()
    try:
        if "," in text:
            values = [convert(v) for v in text.split(",") if v.strip()]
        else:
            parts = text.split(":")
            if not 1 <= len(parts) <= 3:
                raise ValueError
            start = convert(parts[0])
            end = convert(parts[1]) if len(parts) > 1 and parts[1] else start
            step_text = parts[2].strip() if len(parts) > 2 else "1"
            if end < start:
                raise ValueError(f"range '{text}' ends below its start")
            if step_text[:1] in ("x", "*"):
                factor = float(step_text[1:])
                if factor <= 1:
                    raise ValueError(f"range '{text}': the factor must be above 1")
                count = math.floor(math.log(end / start, factor) + 1e-9) + 1 if start > 0 else 1
                values = [convert(start * factor**i) for i in range(min(count, MAX_STEPS + 1))]
                if integer:  # x1.5 on small integers repeats values: keep each once
                    values = sorted(set(values))
            else:
                step = convert(step_text)
                if step <= 0:
                    raise ValueError(f"range '{text}': the step must be positive")
                count = math.floor((end - start) / step + 1e-9) + 1
                values = [convert(start + i * step) for i in range(min(count, MAX_STEPS + 1))]
    except ValueError as exc:
        if str(exc) and "invalid literal" not in str(exc) and "could not convert" not in str(exc):
            raise
        raise ValueError(f"cannot read range '{text}': use START[:END[:STEP|:xFACTOR]] or A,B,C") from None
    if not values:
        raise ValueError(f"range '{text}' is empty")
    if any(v <= 0 for v in values):
        raise ValueError(f"range '{text}': values must be positive")
    if len(values) > MAX_STEPS:
        raise ValueError(f"range '{text}' has more than {MAX_STEPS} steps")
    return tuple(float(v) for v in values)


def _normalize_url(url: str | None, protocol: str) -> tuple[str, bool]:
    """host:port without scheme (tritonclient's form) and whether TLS was asked for with https://."""
    if not url:
        return f"localhost:{DEFAULT_PORTS[protocol]}", False
    ssl = False
    for scheme in ("http://", "https://", "grpc://", "grpcs://"):
        if url.startswith(scheme):
            ssl = scheme in ("https://", "grpcs://")
            url = url[len(scheme):]
            break
    url = url.rstrip("/")
    if "/" in url:
        raise ValueError(f"--url takes host:port, not a path: '{url}'")
    return url, ssl


def options_from_args(args: argparse.Namespace) -> BenchOptions:
    """Validate the command line; ValueError says what is wrong."""
    url, ssl = _normalize_url(args.url, args.protocol)
    if args.request_rate is not None:
        mode: Mode = "rate"
        steps = parse_range(str(args.request_rate), integer=False)
    elif args.request_rate_range:
        mode, steps = "rate", parse_range(args.request_rate_range, integer=False)
    else:
        mode, steps = "concurrency", parse_range(args.concurrency_range or "1")
    if args.duration <= 0:
        raise ValueError("--duration must be positive")
    if args.max_requests is not None and args.max_requests < 1:
        raise ValueError("--max-requests must be at least 1")
    if args.processes < 1:
        raise ValueError("--processes must be at least 1")
    if args.string_length < 0:
        raise ValueError("--string-length must be >= 0")
    if args.request_timeout <= 0:
        raise ValueError("--request-timeout must be positive")
    target = Target(protocol=args.protocol, url=url, model=args.model_name, version=str(args.model_version),
                    ssl=ssl, binary=args.binary, request_timeout_s=args.request_timeout)
    return BenchOptions(
        target=target, mode=mode, steps=steps, batch_size=args.batch_size, duration_s=args.duration,
        max_requests=args.max_requests, distribution=args.request_distribution, input_data=args.input_data,
        shapes=tuple(parse_shapes(args.shape).items()), string_length=args.string_length,
        shared_memory=args.shared_memory, processes=args.processes, csv=args.csv, progress=args.progress,
        show_histogram=args.histogram, seed=args.seed,
    )


def run_bench(args: argparse.Namespace) -> int:
    """The `inferd bench` command: 0 when every request succeeded, 1 when some failed or it could not start."""
    try:
        options = options_from_args(args)
    except ValueError as exc:
        print(f"inferd bench: error: {exc}", file=sys.stderr)
        return 2
    try:
        results = benchmark(options)
    except BenchError as exc:
        print(f"inferd bench: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("inferd bench: interrupted", file=sys.stderr)
        return 130
    return 1 if any(r.errors for r in results) else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


# ---- the run ----

def benchmark(options: BenchOptions, out: TextIO | None = None, err: TextIO | None = None) -> list[StepResult]:
    """Run every step and print as it goes; returns the results (also written to `options.csv`).

    Ctrl-C ends the run early, like hey: the steps already measured are still summarized and written, then
    KeyboardInterrupt propagates.
    """
    out = out or sys.stdout
    err = err or sys.stderr
    loop = new_event_loop(options.target.protocol)
    task = loop.create_task(_bench(options, out, err))

    def interrupt() -> None:
        loop.remove_signal_handler(signal.SIGINT)  # a second Ctrl-C is a plain KeyboardInterrupt
        task.cancel()

    handled = False
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # Windows, or not the main thread
        loop.add_signal_handler(signal.SIGINT, interrupt)
        handled = True
    try:
        return loop.run_until_complete(task)
    finally:
        if handled:
            loop.remove_signal_handler(signal.SIGINT)
        with contextlib.suppress(Exception):
            loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


async def _bench(options: BenchOptions, out: TextIO, err: TextIO) -> list[StepResult]:
    target = options.target
    try:
        client = LoadClient(target)
    except ImportError as exc:
        raise BenchError(str(exc)) from None
    results: list[StepResult] = []
    interrupted = False
    try:
        specs, outputs, max_batch_size = await _model_inputs(client, options)
        target = dataclasses.replace(target, outputs=outputs)
        input_sets = build_input_sets(specs, options.input_data, batched=max_batch_size > 0,
                                      string_length=options.string_length, seed=options.seed)
        async with _input_memory(client, options, input_sets) as input_sets:
            _print_header(options, specs, len(input_sets), out)
            if options.processes == 1:
                client.prepare(input_sets, outputs)
                runner: StepRunner = LocalRunner(client)
            else:
                runner = ProcessRunner(target, input_sets, options.processes)
            try:
                for value in options.steps:
                    result = await _run_one_step(runner, options, value, err)
                    results.append(result)
                    _print_step(result, options, out)
            except asyncio.CancelledError:
                interrupted = True
                print(f"\ninterrupted; {len(results)} of {len(options.steps)} step(s) measured", file=out)
            finally:
                await runner.close(now=interrupted)
    except ValueError as exc:
        raise BenchError(str(exc)) from None
    finally:
        await client.close()
    if len(results) > 1:
        print(f"\nSummary: {options.target.model} over {_protocol_label(options)}", file=out)
        print(summary_table(results), file=out)
    if options.csv is not None and results:
        write_csv(options.csv, results)
        print(f"wrote {options.csv}", file=out)
    out.flush()
    if interrupted:
        raise KeyboardInterrupt
    return results


async def _model_inputs(client: LoadClient, options: BenchOptions) -> tuple[list[InputSpec], tuple[str, ...], int]:
    """Input specs, output names and max_batch_size from the model's metadata and configuration."""
    target = options.target
    api = client.client
    try:
        live = await api.is_server_live()
    except Exception as exc:
        raise BenchError(f"cannot reach {target.url} over {_PROTOCOL_NAMES[target.protocol]}: {exc}") from None
    if not live:
        raise BenchError(f"the server at {target.url} is not live")
    grpc = target.protocol == "grpc"
    try:
        if grpc:
            metadata = await api.get_model_metadata(target.model, target.version, as_json=True)
        else:
            metadata = await api.get_model_metadata(target.model, target.version)
    except Exception as exc:
        raise BenchError(f"model '{target.model}': {exc}") from None
    try:
        if grpc:
            config = (await api.get_model_config(target.model, target.version, as_json=True)).get("config", {})
        else:
            config = await api.get_model_config(target.model, target.version)
        max_batch_size = int(config.get("max_batch_size", 0))
    except Exception:
        # Servers without Triton's model-configuration extension (MLServer, KServe): a leading -1 in every
        # input's shape is the batch dimension.
        shapes = [list(i.get("shape", [])) for i in metadata.get("inputs", [])]
        batched = bool(shapes) and all(s and int(s[0]) == -1 for s in shapes)
        max_batch_size = 2**31 - 1 if batched else 0
    specs = input_specs(metadata, max_batch_size, options.batch_size, dict(options.shapes),
                        variable_ok=options.input_data not in ("random", "zero"))
    outputs = tuple(str(o["name"]) for o in metadata.get("outputs", []))
    return specs, outputs, max_batch_size


@contextlib.asynccontextmanager
async def _input_memory(client: LoadClient, options: BenchOptions,
                        input_sets: list[list[TensorData]]) -> AsyncIterator[list[list[TensorData]]]:
    """The input sets as they are, or placed in system shared memory for the run."""
    if options.shared_memory == "none":
        yield input_sets
        return
    async with system_shared_memory(client.client, options.target.protocol, options.target.url,
                                    input_sets) as placed:
        yield placed


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


async def _run_one_step(runner: StepRunner, options: BenchOptions, value: float, err: TextIO) -> StepResult:
    count = options.processes
    if options.mode == "concurrency":
        concurrencies = _split(int(value), count)
        rates = [0.0] * count
    else:
        concurrencies = [0] * count
        rates = [value / count] * count
    limits = _split(options.max_requests, count) if options.max_requests is not None else [None] * count
    plans = [StepPlan(mode=options.mode, concurrency=c, rate=r, distribution=options.distribution,
                      duration_s=options.duration_s, max_requests=limit, seed=options.seed + i)
             for i, (c, r, limit) in enumerate(zip(concurrencies, rates, limits, strict=True))]
    show = options.progress if options.progress is not None else err.isatty()
    label = f"concurrency {int(value)}" if options.mode == "concurrency" else f"rate {value:g}/s"
    progress = ProgressBar(err, label, options.duration_s, options.max_requests) if show else None
    try:
        samples = await runner.run(plans, progress)
    finally:
        if progress is not None:
            progress.close()
    return merge_samples(samples, mode=options.mode, concurrency=int(value) if options.mode == "concurrency" else 0,
                         rate=value if options.mode == "rate" else 0.0, protocol=options.target.protocol,
                         batch_size=options.batch_size)


# ---- printing ----

def _protocol_label(options: BenchOptions) -> str:
    if options.target.protocol == "grpc":
        return "gRPC"
    return "HTTP (" + ("binary" if options.target.binary else "JSON") + " tensors)"


def _print_header(options: BenchOptions, specs: Sequence[InputSpec], sets: int, out: TextIO) -> None:
    target = options.target
    version = target.version or "default"
    inputs = ", ".join(f"{s.name} {s.datatype} {list(s.shape)}" for s in specs) or "none"
    data = options.input_data if options.input_data in ("random", "zero") else f"file {options.input_data}"
    memory = ", system shared memory" if options.shared_memory == "system" else ""
    loop = "uvloop" if "uvloop" in type(asyncio.get_running_loop()).__module__ else "asyncio"
    what = "concurrency" if options.mode == "concurrency" else f"request rate ({options.distribution})"
    steps = ", ".join(f"{int(v)}" if options.mode == "concurrency" else f"{v:g}/s" for v in options.steps)
    limit = f" or {options.max_requests:,} requests" if options.max_requests else ""
    print(f"inferd bench: model '{target.model}' version {version} at {target.url} over {_protocol_label(options)}, "
          f"batch size {options.batch_size}", file=out)
    print(f"  inputs: {inputs} ({data}, {sets} distinct request(s){memory})", file=out)
    print(f"  {what}: {steps}; {options.duration_s:g} s{limit} per step; client: {options.processes} process(es) "
          f"on {loop}", file=out)
    out.flush()


def _print_step(result: StepResult, options: BenchOptions, out: TextIO) -> None:
    print(f"\n{result.label.capitalize()}: {result.requests:,} requests in {result.elapsed_s:.2f} s", file=out)
    print(step_table(result), file=out)
    if options.show_histogram:
        print(histogram(result.latencies_ms), file=out)
    out.flush()
