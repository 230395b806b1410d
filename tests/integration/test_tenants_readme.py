"""The tenants tour of docs/tenants.md, run as written (bash, `inferd` on PATH), on a free port instead of 8000."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

from models import add_simple
from serving import INFERD, free_ports

README = Path(__file__).resolve().parents[2] / "docs" / "tenants.md"  # the tour moved from the README


def _tour() -> str:
    text = README.read_text()
    start = text.index("```bash\n# tenants-tour\n") + len("```bash\n")
    return text[start:text.index("```", start)]


def test_readme_tenants_tour(tmp_path: Path) -> None:
    add_simple(tmp_path / "models")
    http, grpc, metrics = free_ports(3)
    script = _tour().replace("localhost:8000", f"localhost:{http}").replace(
        "--state-dir state &", f"--state-dir state --http-port {http} --grpc-port {grpc} --metrics-port {metrics} "
        "> server.log 2>&1 &")
    script = "set -euo pipefail\ntrap 'kill %1 2>/dev/null; wait' EXIT\n" + script
    env = {**os.environ, "PATH": f"{INFERD.parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr + (tmp_path / "server.log").read_text()
    out = done.stdout
    answer = json.loads(re.search(r'\{"model_name".*?\]\}\]\}', out).group(0))  # type: ignore[union-attr]
    assert answer["outputs"][0]["data"] == [v + 1 for v in range(16)]
    assert re.search(r"^acme\s+[0-9a-f]{12}\s+simple\*\s+50 req/s burst 100", out, re.M), out
    usage = [line.split() for line in out.splitlines() if line.startswith("acme ")]
    assert usage[-1][1] == "simple" and usage[-1][3] == "1", out  # one request by acme, in the usage table
    stored = (tmp_path / "auth.yaml").read_text()
    assert (tmp_path / "acme.key").read_text().strip() not in stored  # only the key's hash is kept
