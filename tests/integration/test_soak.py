"""The hardening issue's one-minute soak: `benchmarks/soak.py --duration 60` in a subprocess.

The script serves an ONNX model that must never fail, a Python model whose instance processes it kills (SIGKILL)
and a model it unloads and loads again, over V2 HTTP, V2 gRPC and V1 `:predict`, and exits 1 if a request was
lost (no answer at all), answered wrongly or failed for a reason the chaos does not explain, if the server died, or
if its RSS or open FDs grew. Here it runs at a lighter rate than its default, to share the machine with the suite.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SOAK = Path(__file__).resolve().parents[2] / "benchmarks" / "soak.py"
DURATION_S = 60
TIMEOUT_S = 150


def test_one_minute_soak_loses_nothing() -> None:
    run = subprocess.run([sys.executable, str(SOAK), "--duration", str(DURATION_S), "--interval", "0.1",
                          "--server-log"], capture_output=True, text=True, timeout=TIMEOUT_S)
    output = run.stdout + run.stderr
    summaries = [line for line in run.stdout.splitlines() if line.startswith("SOAK-SUMMARY ")]
    assert summaries, output
    summary = json.loads(summaries[-1].removeprefix("SOAK-SUMMARY "))
    assert run.returncode == 0, output
    assert summary["problems"] == [], output
    totals = summary["totals"]
    for protocol in ("http", "grpc", "v1"):
        assert totals[protocol]["lost"] == 0, output
        assert totals[protocol]["answered"] > 0, output
        assert totals[protocol]["wrong"] == 0, output
    assert totals["total"]["sent"] == (totals["total"]["answered"] + totals["total"]["failed"]
                                       + totals["total"]["wrong"] + totals["total"]["lost"]), output
    assert summary["kills"] > 0 and summary["unloads"] > 0, output  # the chaos happened
