"""Stages from installed packages (the `inferd.stages` entry-point group): read while the models load, in the
pipeline before the server is live, and in it at once for a server built not started. A package is put on the
path as pip leaves one (a module and its .dist-info); each check runs in a fresh interpreter."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

PLUGIN = '''
from inferd.types import ErrorKind, InferError

class Closed:
    name = "closed"
    before = "resolve"
    def __call__(self, call):
        raise InferError(ErrorKind.UNAVAILABLE, "closed for maintenance")

def make(server):
    return Closed()
'''


def _site(root: Path) -> Path:
    site = root / "site"
    (site / "closed_stage-1.0.dist-info").mkdir(parents=True)
    (site / "closed_stage.py").write_text(PLUGIN)
    (site / "closed_stage-1.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: closed-stage\n"
                                                                 "Version: 1.0\n")
    (site / "closed_stage-1.0.dist-info" / "entry_points.txt").write_text(
        "[inferd.stages]\nclosed = closed_stage:make\nbroken = closed_stage:missing\n")
    return site


def _run(site: Path, code: str) -> dict:
    done = subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(site)!r})\n{code}"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return {"out": json.loads(done.stdout.splitlines()[-1]), "err": done.stderr}


def test_entry_point_stages_are_in_the_pipeline_before_requests(tmp_path: Path) -> None:
    site = _site(tmp_path)
    (tmp_path / "models").mkdir()
    code = (f"import json\nfrom inferd import Server\nfrom inferd.types import InferError\n"
            f"server = Server({str(tmp_path / 'models')!r})\n"
            "try:\n    server.infer('anything', {'x': [1.0]})\nexcept InferError as exc:\n    refused = exc.message\n"
            f"cold = Server({str(tmp_path / 'models')!r}, start=False)\n"
            "print(json.dumps([server.pipeline.names, cold.pipeline.names, refused]))")
    result = _run(site, code)
    started, not_started, refused = result["out"]
    for names in (started, not_started):
        assert names.index("closed") == names.index("resolve") - 1  # where its `before` says
    assert refused == "closed for maintenance"
    # An entry point naming nothing is reported and left out; the server starts all the same.
    assert "pipeline stage plugin 'broken' (closed_stage:missing) failed to load" in result["err"]
