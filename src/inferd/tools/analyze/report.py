"""What `inferd analyze` shows: the Pareto set (no other point is both faster and quicker to answer), its table,
and a plot of the sweep (matplotlib when installed, else an SVG written here)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from ..errors import ToolError
from .search import Limits, Measurement


def pareto(measurements: Sequence[Measurement], limits: Limits) -> list[Measurement]:
    """The points that met the limits and that no other such point beats on both throughput and p99, fastest
    first."""
    met = sorted((m for m in measurements if limits.met(m)), key=lambda m: (-m.throughput, m.p99_ms))
    front: list[Measurement] = []
    for m in met:
        if not front or m.p99_ms < front[-1].p99_ms:
            front.append(m)
    return front


def table(rows: Sequence[Measurement], best: Measurement | None = None) -> str:
    header = ["", "instances", "max batch", "preferred", "delay µs", "concurrency", "infer/s", "p99 ms", "RSS MB",
              "over s"]
    body = []
    for m in rows:
        c = m.point.config
        batching = c.max_batch_size > 1
        body.append(["*" if best is not None and m.point == best.point else "", str(c.instances),
                     str(c.max_batch_size), str(c.max_batch_size) if c.preferred else "-",
                     str(c.delay_us) if batching else "-", str(m.point.concurrency), f"{m.throughput:.1f}",
                     "-" if math.isnan(m.p99_ms) else f"{m.p99_ms:.2f}",
                     "-" if m.rss_mb is None else f"{m.rss_mb:.0f}", f"{m.seconds:.1f}"])
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)) for r in body]
    return "\n".join(lines)


def plot(path: Path, measurements: Sequence[Measurement], front: Sequence[Measurement],
         best: Measurement | None, limits: Limits) -> None:
    """Throughput against p99 of every probe, the Pareto front joined, the best ringed, the budget a line."""
    points = [m for m in measurements if not math.isnan(m.p99_ms)]
    if path.suffix.lower() not in (".png", ".svg"):
        raise ToolError(f"--plot {path}: the file must end in .png or .svg")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        if path.suffix.lower() == ".png":
            raise ToolError("a .png plot needs matplotlib: pip install 'inferd[analyze]' (or ask for .svg)") from None
        path.write_text(_svg(points, front, best, limits.latency_budget_ms))
        return
    figure, axes = plt.subplots(figsize=(7, 4.5))
    axes.scatter([m.p99_ms for m in points], [m.throughput for m in points], s=14, color="0.6", label="probes")
    axes.plot([m.p99_ms for m in front], [m.throughput for m in front], "o-", color="C0", label="Pareto front")
    if best is not None:
        axes.scatter([best.p99_ms], [best.throughput], s=120, facecolors="none", edgecolors="C3", label="best")
    if limits.latency_budget_ms is not None:
        axes.axvline(limits.latency_budget_ms, color="C3", linestyle="--", label="latency budget")
    axes.set_xlabel("p99 latency (ms)")
    axes.set_ylabel("throughput (inferences/s)")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def _svg(points: Sequence[Measurement], front: Sequence[Measurement], best: Measurement | None,
         budget: float | None) -> str:
    width, height, pad = 640, 400, 50
    xmax = max([m.p99_ms for m in points] + [budget or 0.0, 1e-9]) * 1.05
    ymax = max([m.throughput for m in points] + [1e-9]) * 1.05

    def xy(x: float, y: float) -> tuple[float, float]:
        return pad + x / xmax * (width - 2 * pad), height - pad - y / ymax * (height - 2 * pad)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-size="12">',
             f'<rect width="{width}" height="{height}" fill="white"/>',
             f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="black"/>',
             f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}" stroke="black"/>',
             f'<text x="{width / 2}" y="{height - 10}" text-anchor="middle">p99 latency (ms), up to {xmax:.3g}</text>',
             f'<text x="12" y="{pad - 20}">throughput (inferences/s), up to {ymax:.4g}</text>']
    for m in points:
        x, y = xy(m.p99_ms, m.throughput)
        parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="#999"/>')
    line = " ".join("{:.1f},{:.1f}".format(*xy(m.p99_ms, m.throughput)) for m in front)
    parts.append(f'<polyline points="{line}" fill="none" stroke="#1f77b4" stroke-width="2"/>')
    if best is not None:
        x, y = xy(best.p99_ms, best.throughput)
        parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="8" fill="none" stroke="#d62728" stroke-width="2"/>')
    if budget is not None:
        x, _ = xy(budget, 0)
        parts.append(f'<line x1="{x:.1f}" y1="{pad}" x2="{x:.1f}" y2="{height - pad}" stroke="#d62728" '
                     'stroke-dasharray="5,4"/>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
