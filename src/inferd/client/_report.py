"""What `inferd bench` shows: a row per step, hey's latency histogram, a summary table, CSV and a progress bar.

Throughput counts successful requests only; failures have their own column, so an overloaded server that answers
fast with errors never looks fast.
"""

from __future__ import annotations

import csv
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import numpy as np

from ._loadgen import Mode, StepSample

__all__ = ["ProgressBar", "StepResult", "histogram", "merge_samples", "step_table", "summary_table", "write_csv"]

PERCENTILES = (50, 90, 95, 99)
# Client CPU per process (% of one core) above which the report warns that the client may be the limit.
CLIENT_SATURATED_PCT = 80.0
_HISTOGRAM_BUCKETS = 10
_BAR_WIDTH = 40  # hey's


@dataclass
class StepResult:
    """One step of a sweep, merged over the processes that ran it."""

    mode: Mode
    concurrency: int
    rate: float
    protocol: str
    batch_size: int
    processes: int
    requests: int  # every request sent and completed, failed ones included: the server's count
    errors: int
    elapsed_s: float
    cpu_s: float
    latencies_ms: np.ndarray = field(repr=False)  # successful requests only
    error_messages: Counter[str] = field(default_factory=Counter)
    send_lag_avg_ms: float = 0.0
    send_lag_max_ms: float = 0.0

    @property
    def successes(self) -> int:
        return self.requests - self.errors

    @property
    def req_per_s(self) -> float:
        return self.successes / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def infer_per_s(self) -> float:
        return self.req_per_s * self.batch_size

    @property
    def client_cpu_pct(self) -> float:
        """The client's CPU time over the step's wall time, in % of one core summed over processes (as `top`)."""
        return 100.0 * self.cpu_s / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def client_saturated(self) -> bool:
        return self.client_cpu_pct / max(self.processes, 1) >= CLIENT_SATURATED_PCT

    def latency_ms(self, statistic: str) -> float:
        """`avg`, `min`, `max` or `pNN` of the successful requests' latency; NaN when none succeeded."""
        values = self.latencies_ms
        if values.size == 0:
            return float("nan")
        if statistic == "avg":
            return float(values.mean())
        if statistic == "min":
            return float(values.min())
        if statistic == "max":
            return float(values.max())
        return float(np.percentile(values, float(statistic.removeprefix("p"))))

    @property
    def label(self) -> str:
        return f"concurrency {self.concurrency}" if self.mode == "concurrency" else f"request rate {self.rate:g}/s"


def merge_samples(samples: Sequence[StepSample], *, mode: Mode, concurrency: int, rate: float, protocol: str,
                  batch_size: int) -> StepResult:
    """One report row from the samples of every process (they started together behind a barrier)."""
    latencies = np.concatenate([s.latencies_ns for s in samples]) if samples else np.empty(0, np.int64)
    errors: Counter[str] = Counter()
    for sample in samples:
        errors.update(sample.errors)
    sends = sum(s.sends for s in samples)
    return StepResult(
        mode=mode, concurrency=concurrency, rate=rate, protocol=protocol, batch_size=batch_size,
        processes=len(samples), requests=sum(s.requests for s in samples), errors=sum(errors.values()),
        elapsed_s=max((s.elapsed_ns for s in samples), default=0) / 1e9, cpu_s=sum(s.cpu_s for s in samples),
        latencies_ms=latencies.astype(np.float64) / 1e6, error_messages=errors,
        send_lag_avg_ms=sum(s.send_lag_ns for s in samples) / sends / 1e6 if sends else 0.0,
        send_lag_max_ms=max((s.send_lag_max_ns for s in samples), default=0) / 1e6,
    )


# ---- tables ----

def _ms(value: float) -> str:
    return "-" if np.isnan(value) else f"{value:.3f}" if value < 10 else f"{value:.2f}"


def _columns(results: Sequence[StepResult]) -> tuple[list[str], list[list[str]]]:
    rate_mode = any(r.mode == "rate" for r in results)
    header = ["Rate/s" if rate_mode else "Concurrency", "Requests", "Errors", "infer/s", "req/s", "avg ms",
              *(f"p{p} ms" for p in PERCENTILES), "Client CPU"]
    if rate_mode:
        header.append("Send lag ms")
    rows = []
    for r in results:
        row = [f"{r.rate:g}" if r.mode == "rate" else str(r.concurrency), f"{r.requests:,}", f"{r.errors:,}",
               f"{r.infer_per_s:,.1f}", f"{r.req_per_s:,.1f}", _ms(r.latency_ms("avg")),
               *(_ms(r.latency_ms(f"p{p}")) for p in PERCENTILES),
               f"{r.client_cpu_pct:.0f}%" + ("!" if r.client_saturated else "")]
        if rate_mode:
            row.append(f"{r.send_lag_avg_ms:.3f}")
        rows.append(row)
    return header, rows


def _render(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(line[i]) for line in [header, *rows]) for i in range(len(header))]
    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    lines = [rule, "| " + " | ".join(h.rjust(w) for h, w in zip(header, widths, strict=True)) + " |", rule]
    lines += ["| " + " | ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) + " |" for row in rows]
    lines.append(rule)
    return "\n".join(lines)


def step_table(result: StepResult) -> str:
    """The one-row table printed after each step, with its errors and a note when the client was saturated."""
    lines = [_render(*_columns([result]))]
    if result.error_messages:
        lines.append("Errors:")
        lines += [f"  [{count}] {message}" for message, count in result.error_messages.most_common()]
    if result.client_saturated:
        lines.append(f"Note: the client used {result.client_cpu_pct:.0f}% CPU in {result.processes} process(es); "
                     "it may be the bottleneck (try --processes).")
    if result.mode == "rate" and result.send_lag_max_ms > 100:
        lines.append(f"Note: sends ran up to {result.send_lag_max_ms:.0f} ms behind schedule; the client could not "
                     "hold the rate.")
    return "\n".join(lines)


def summary_table(results: Sequence[StepResult]) -> str:
    return _render(*_columns(results))


def histogram(latencies_ms: np.ndarray, buckets: int = _HISTOGRAM_BUCKETS) -> str:
    """hey's response time histogram: equal-width buckets from fastest to slowest, labelled by their upper edge."""
    if latencies_ms.size == 0:
        return "Latency histogram: no successful requests"
    low, high = float(latencies_ms.min()), float(latencies_ms.max())
    if high <= low:
        high = low + 1e-3
    counts, edges = np.histogram(latencies_ms, bins=buckets, range=(low, high))
    peak = int(counts.max())
    labels = [f"{edge:.3f}" for edge in edges[1:]]
    label_width = max(len(s) for s in labels)
    count_width = max(len(str(int(c))) for c in counts) + 2
    lines = ["Latency histogram (ms):"]
    for label, count in zip(labels, counts, strict=True):
        bar = "■" * (int(count) * _BAR_WIDTH // peak if peak else 0)
        lines.append(f"  {label.rjust(label_width)} {f'[{int(count)}]'.ljust(count_width)} |{bar}")
    return "\n".join(lines)


CSV_COLUMNS = (
    "mode", "concurrency", "request_rate", "protocol", "batch_size", "processes", "elapsed_s", "requests",
    "successes", "errors", "infer_per_s", "req_per_s", "avg_ms", "min_ms", "p50_ms", "p90_ms", "p95_ms", "p99_ms",
    "max_ms", "client_cpu_pct", "send_lag_avg_ms", "send_lag_max_ms",
)


def write_csv(path: Path, results: Sequence[StepResult]) -> None:
    """One row per step, every number the tables show and more (min, max, elapsed, lag), unrounded."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for r in results:
            writer.writerow([
                r.mode, r.concurrency if r.mode == "concurrency" else "", r.rate if r.mode == "rate" else "",
                r.protocol, r.batch_size, r.processes, f"{r.elapsed_s:.6f}", r.requests, r.successes, r.errors,
                f"{r.infer_per_s:.3f}", f"{r.req_per_s:.3f}",
                *(f"{r.latency_ms(s):.6f}" for s in ("avg", "min", "p50", "p90", "p95", "p99", "max")),
                f"{r.client_cpu_pct:.1f}", f"{r.send_lag_avg_ms:.6f}", f"{r.send_lag_max_ms:.6f}",
            ])


# ---- progress ----

class ProgressBar:
    """A one-line bar on a terminal, redrawn in place and erased when the step ends (no dependency).

    Its clock starts at the first `update`, which the load loop sends when its step starts (after warm-up and, with
    `--processes`, after the workers have spawned).
    """

    def __init__(self, stream: TextIO, label: str, duration_s: float, max_requests: int | None) -> None:
        self._stream = stream
        self._label = label
        self._duration_s = duration_s
        self._max_requests = max_requests
        self._start: float | None = None

    def update(self, completed: int) -> None:
        now = time.monotonic()
        if self._start is None:
            self._start = now
        elapsed = now - self._start
        fraction = elapsed / self._duration_s if self._duration_s > 0 else 0.0
        if self._max_requests:
            fraction = max(fraction, completed / self._max_requests)
        fraction = min(fraction, 1.0)
        filled = int(fraction * 30)
        rate = completed / elapsed if elapsed > 0 else 0.0
        self._stream.write(f"\r\x1b[K{self._label} [{'█' * filled}{'░' * (30 - filled)}] {fraction:4.0%} "
                           f"{min(elapsed, self._duration_s):.1f}/{self._duration_s:g} s  {completed:,} req  "
                           f"{rate:,.0f} req/s")
        self._stream.flush()

    def close(self) -> None:
        self._stream.write("\r\x1b[K")
        self._stream.flush()
