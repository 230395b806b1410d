"""Small real TorchServe archives for tests: built by the real `torch-model-archiver` around a function handler.

The handler answers each request with its body upper-cased, the model name TorchServe's context gives, and the
process id of the worker that ran it (so a test can tell the workers apart).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ARCHIVER = Path(sys.executable).parent / "torch-model-archiver"

UPPER_HANDLER = '''
import os


def handle(data, context):
    if data is None:  # TorchServe initializes a function handler by calling it with no data
        return None
    answers = []
    for row in data:
        body = row.get("body") if isinstance(row, dict) else row
        if isinstance(body, (bytes, bytearray)):
            body = body.decode("utf-8", errors="replace")
        answers.append({"upper": str(body).upper(), "model": context.model_name, "pid": os.getpid()})
    return answers
'''


def upper(text: str) -> dict[str, str]:
    """What the handler answers for `text` (without the worker's pid)."""
    return {"upper": text.upper()}


def build_upper_mar(work: Path, name: str, export: Path, version: str = "1.0") -> Path:
    """`<export>/<name>.mar`, made by torch-model-archiver from the upper-casing handler."""
    source = work / f"src-{name}"
    source.mkdir(parents=True, exist_ok=True)
    (source / "upper_handler.py").write_text(UPPER_HANDLER)
    (source / "unused.pt").write_bytes(b"")  # a function handler loads no model, but the archiver wants a file
    export.mkdir(parents=True, exist_ok=True)
    subprocess.run([str(ARCHIVER), "--model-name", name, "--version", version, "--serialized-file", "unused.pt",
                    "--handler", "upper_handler.py", "--export-path", str(export), "--force"],
                   check=True, cwd=source, capture_output=True)
    return export / f"{name}.mar"
