"""A command shown in the documentation is a command a test runs.

Every fenced code block of README.md and docs/**/*.md preceded by the line `<!-- runnable -->` is run here against a
real `inferd serve` of the example repository (built by examples/build_repository.py, the one `make serve` serves):

- `bash` blocks run with `bash -euo pipefail`, the venv's bin/ first on PATH (so `inferd` and `python` are the
  project's), and `curl` made to fail on an HTTP error status (`--fail-with-body`); the output must hold no
  `{"error": ...}` answer;
- `python` blocks run with the venv's Python;
- `<!-- runnable: error -->` marks a bash block that shows an error on purpose: it runs with plain curl and its
  output must be an `{"error": ...}` answer;
- `localhost:8000` / `:8001` / `:8002` become the test server's HTTP, gRPC and metrics ports, and
  `examples/model_repository` the repository this test built.

The "bring your own model" pages build their own models, each page in a folder of its own: there
`<!-- runnable: setup -->` marks a block that writes model files under `models/` (run in document order),
`<!-- runnable: file=PATH -->` a block whose text is a file to write at PATH (a model.py), and
`<!-- runnable: models -->` a block run against `inferd serve --model-repository models` of the page's folder,
started once the page's setup blocks have run. `<!-- runnable: seldon -->` marks a block run against
`inferd microservice`, started in the folder of the page that holds the first `inferd microservice ...` line of
those blocks, with that line's arguments (the blocks then run without it), `localhost:9000` being its HTTP port.

A ```json block right after a runnable block, marked `<!-- answer -->`, is the answer the page promises: the block
must print that JSON document (among whatever else it prints). Each block must exit 0 (within BLOCK_TIMEOUT_S).
docs/contributing.md says the same to the people who write the docs.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

from serving import INFERD, Microservice, ServerProcess, start_server

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
MARKER = re.compile(r"^<!-- runnable(?::\s*(?P<mode>[\w-]+)(?:=(?P<arg>\S+))?)? -->\s*$")
FENCE = re.compile(r"^```(?P<lang>\w*)\s*$")
ANSWER = "<!-- answer -->"
MODES = {None, "error", "setup", "file", "models", "seldon"}
LANGUAGES = {"bash", "python"}
BLOCK_TIMEOUT_S = 180


class Block(NamedTuple):
    document: str  # relative to the repository root
    line: int  # of the opening fence, 1-based
    lang: str
    mode: str | None
    code: str
    arg: str | None = None  # the path of a `file=PATH` block
    answer: str | None = None  # the JSON shown after it under `<!-- answer -->`: what the block must print


def runnable_blocks(path: Path) -> list[Block]:
    """The marked blocks of one Markdown file (a marker inside a code block is text, not a marker); a marker that is
    not followed by a fenced block raises."""
    lines = path.read_text().splitlines()
    blocks = []
    name = str(path.relative_to(ROOT))
    in_code = False
    for i, line in enumerate(lines):
        if line.startswith("```"):
            in_code = not in_code
        marker = None if in_code else MARKER.match(line)
        if marker is None:
            continue
        j = i + 1
        while j < len(lines) and not lines[j].strip():
            j += 1
        fence = FENCE.match(lines[j]) if j < len(lines) else None
        if fence is None:
            raise ValueError(f"{name}:{i + 1}: '<!-- runnable -->' must be followed by a fenced code block")
        end = next((k for k in range(j + 1, len(lines)) if lines[k].startswith("```")), None)
        if end is None:
            raise ValueError(f"{name}:{j + 1}: the fenced block is not closed")
        blocks.append(Block(name, j + 1, fence["lang"], marker["mode"], "\n".join(lines[j + 1:end]) + "\n",
                            marker["arg"], _answer(lines, end + 1, name)))
    return blocks


def _answer(lines: list[str], start: int, name: str) -> str | None:
    """The text of a ```json block marked `<!-- answer -->` right after a runnable block (blank lines between)."""
    k = start
    while k < len(lines) and not lines[k].strip():
        k += 1
    if k >= len(lines) or lines[k].strip() != ANSWER:
        return None
    if k + 1 >= len(lines) or lines[k + 1].strip() != "```json":
        raise ValueError(f"{name}:{k + 1}: '{ANSWER}' must be followed by a ```json block")
    end = next((e for e in range(k + 2, len(lines)) if lines[e].startswith("```")), None)
    if end is None:
        raise ValueError(f"{name}:{k + 2}: the fenced block is not closed")
    return "\n".join(lines[k + 2:end])


def _printed_json(text: str) -> list[object]:
    """Every JSON document printed in the text, wherever an object or array starts."""
    decoder = json.JSONDecoder()
    found = []
    for match in re.finditer(r"[{\[]", text):
        try:
            found.append(decoder.raw_decode(text, match.start())[0])
        except ValueError:
            continue
    return found


def _check_answer(block: Block, stdout: str, where: str) -> None:
    if block.answer is not None:
        expected = json.loads(block.answer)
        assert expected in _printed_json(stdout), "the page shows another answer than the one given:\n" + where


ALL_BLOCKS = [block for path in DOCUMENTS for block in runnable_blocks(path)]
BLOCKS = [block for block in ALL_BLOCKS if block.mode in (None, "error")]  # against the example repository
SETUP_BLOCKS = [block for block in ALL_BLOCKS if block.mode in ("setup", "file")]
OWN_MODEL_BLOCKS = [block for block in ALL_BLOCKS if block.mode == "models"]
SELDON_BLOCKS = [block for block in ALL_BLOCKS if block.mode == "seldon"]
MICROSERVICE_LINE = re.compile(r"^inferd microservice (.*)$", re.MULTILINE)


@pytest.fixture(scope="module")
def example_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`make serve`'s repository, written by examples/build_repository.py itself."""
    spec = importlib.util.spec_from_file_location("build_repository", ROOT / "examples" / "build_repository.py")
    assert spec is not None and spec.loader is not None
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    root = tmp_path_factory.mktemp("docs-examples") / "model_repository"
    assert builder.main([str(root)]) == 0
    return root


@pytest.fixture(scope="module")
def example_server(example_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = start_server(example_repository, tmp_path_factory.mktemp("docs-logs") / "inferd.log")
    try:
        yield process
    finally:
        process.stop()


class PageModels:
    """What each "bring your own model" page builds, in a folder of its own (pages may reuse model names), and one
    `inferd serve` over it at a time: the tests run page by page, so each page's server starts once."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.folders: dict[str, Path] = {}
        self.current: tuple[str, ServerProcess] | None = None

    def folder(self, document: str) -> Path:
        """The page's folder, its setup blocks run and its files written (once)."""
        if document not in self.folders:
            folder = self.root / re.sub(r"\W", "_", document)
            folder.mkdir()
            for block in (b for b in SETUP_BLOCKS if b.document == document):
                if block.mode == "file":
                    assert block.arg is not None
                    (folder / block.arg).parent.mkdir(parents=True, exist_ok=True)
                    (folder / block.arg).write_text(block.code)
                    continue
                done = _run(block, block.code, folder)
                where = f"{block.document}:{block.line}\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
                assert done.returncode == 0, where
            self.folders[document] = folder
        return self.folders[document]

    def server(self, document: str) -> ServerProcess:
        if self.current is not None and self.current[0] == document:
            return self.current[1]
        self.close()
        folder = self.folder(document)
        process = start_server(folder / "models", folder / "inferd.log", env={"MLFLOW_DISABLE_TELEMETRY": "true"})
        self.current = (document, process)
        return process

    def close(self) -> None:
        if self.current is not None:
            self.current[1].stop()
            self.current = None


@pytest.fixture(scope="module")
def page_models(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PageModels]:
    pages = PageModels(tmp_path_factory.mktemp("own-models"))
    try:
        yield pages
    finally:
        pages.close()


@pytest.fixture(scope="module")
def seldon_microservice(page_models: PageModels) -> Iterator[Microservice]:
    """`inferd microservice` as the Seldon page starts it, in the folder holding that page's class."""
    block, line = next((b, m) for b in SELDON_BLOCKS for m in MICROSERVICE_LINE.findall(b.code))
    folder = page_models.folder(block.document)
    interface, *args = shlex.split(line)
    process = Microservice(folder, folder / "microservice.log", interface, *args)
    try:
        process.wait_live()
        yield process
    finally:
        process.stop()


def _localize(code: str, server: ServerProcess, repository: Path) -> str:
    for default, port in ((8000, server.http_port), (8001, server.grpc_port), (8002, server.metrics_port)):
        code = code.replace(f"localhost:{default}", f"127.0.0.1:{port}")
    return code.replace("examples/model_repository", str(repository))


def _run(block: Block, code: str, folder: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{INFERD.parent}{os.pathsep}{os.environ['PATH']}", "PYTHONUNBUFFERED": "1"}
    if block.lang == "python":
        (folder / "example.py").write_text(code)
        command = [sys.executable, "example.py"]
    else:
        strict_curl = "" if block.mode == "error" else 'curl() { command curl --fail-with-body "$@"; }\n'
        command = ["bash", "-c", "set -euo pipefail\n" + strict_curl + code]
    return subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S,
                          check=False)


def test_the_docs_mark_their_examples() -> None:
    """The quick tour, each protocol page and the SDK have examples a test runs; every marked block is one this test
    knows how to run."""
    assert shutil.which("curl"), "the documentation's examples use curl"
    documents = {block.document for block in BLOCKS}
    for name in ("README.md", "docs/quickstart.md", "docs/protocols/v2.md", "docs/protocols/v1.md", "docs/sdk.md",
                 "docs/metrics.md"):
        assert name in documents, f"{name} has no runnable example"
    for name in ("docs/models/pytorch.md", "docs/models/tensorflow.md", "docs/models/classic-ml.md",
                 "docs/models/mlflow.md", "docs/models/python.md"):
        assert name in {block.document for block in OWN_MODEL_BLOCKS}, f"{name} has no runnable request"
    assert all(block.mode in MODES for block in ALL_BLOCKS), [
        (b.document, b.line, b.mode) for b in ALL_BLOCKS if b.mode not in MODES]
    assert all(block.lang in LANGUAGES for block in ALL_BLOCKS if block.mode != "file"), [
        (b.document, b.line, b.lang) for b in ALL_BLOCKS if b.lang not in LANGUAGES and b.mode != "file"]
    assert all(block.arg for block in SETUP_BLOCKS if block.mode == "file")


@pytest.mark.parametrize("block", BLOCKS, ids=[f"{b.document}:{b.line}" for b in BLOCKS])
def test_runnable_example(block: Block, example_server: ServerProcess, example_repository: Path,
                          tmp_path: Path) -> None:
    done = _run(block, _localize(block.code, example_server, example_repository), tmp_path)
    where = f"{block.document}:{block.line}\n--- stdout\n{done.stdout[-4000:]}\n--- stderr\n{done.stderr[-4000:]}"
    assert done.returncode == 0, where
    _check_answer(block, done.stdout, where)
    if block.mode == "error":
        assert '{"error":' in done.stdout, where
    else:
        assert '{"error":' not in done.stdout, where
    assert example_server.process.poll() is None, "the server exited while running " + where


@pytest.mark.parametrize("block", OWN_MODEL_BLOCKS, ids=[f"{b.document}:{b.line}" for b in OWN_MODEL_BLOCKS])
def test_bring_your_own_model_example(block: Block, page_models: PageModels, tmp_path: Path) -> None:
    server = page_models.server(block.document)
    done = _run(block, _localize(block.code, server, tmp_path), tmp_path)
    where = f"{block.document}:{block.line}\n--- stdout\n{done.stdout[-4000:]}\n--- stderr\n{done.stderr[-4000:]}"
    assert done.returncode == 0, where
    _check_answer(block, done.stdout, where)
    assert '{"error":' not in done.stdout, where
    assert server.process.poll() is None, "the server exited while running " + where


@pytest.mark.parametrize("block", SELDON_BLOCKS, ids=[f"{b.document}:{b.line}" for b in SELDON_BLOCKS])
def test_seldon_example(block: Block, seldon_microservice: Microservice, tmp_path: Path) -> None:
    code = MICROSERVICE_LINE.sub("", block.code).replace("localhost:9000", seldon_microservice.http_url)
    done = _run(block, code, tmp_path)
    where = f"{block.document}:{block.line}\n--- stdout\n{done.stdout[-4000:]}\n--- stderr\n{done.stderr[-4000:]}"
    assert done.returncode == 0, where
    _check_answer(block, done.stdout, where)
    assert '"status":' not in done.stdout and '{"error":' not in done.stdout, where  # Seldon's and V2's errors
    assert seldon_microservice.process.poll() is None, "the microservice exited while running " + where


def _build_site(folder: Path) -> subprocess.CompletedProcess[str]:
    mkdocs = INFERD.parent / "mkdocs"
    return subprocess.run([str(mkdocs), "build", "--strict", "--site-dir", str(folder / "site")], cwd=folder,
                          capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S, check=False,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})


def test_site_builds_strictly_and_fails_on_broken_pages(tmp_path: Path) -> None:
    """`make docs` (mkdocs build --strict): the site builds, its CLI page is generated from the argument parsers,
    and a page missing from the navigation or a link to a missing page fails the build."""
    shutil.copy2(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    shutil.copytree(ROOT / "docs", tmp_path / "docs", ignore=shutil.ignore_patterns("__pycache__"))
    built = _build_site(tmp_path)
    assert built.returncode == 0, built.stderr
    cli = " ".join((tmp_path / "site" / "cli" / "index.html").read_text().split())
    for text in ("inferd serve", "--http-port", "default 8000", "default 8001", "default 8002", "inferd tenants add",
                 "inferd microservice", "inferd bench"):
        assert text in cli, text

    orphan = tmp_path / "docs" / "orphan.md"
    orphan.write_text("# A page nobody links\n")
    refused = _build_site(tmp_path)
    assert refused.returncode != 0 and "orphan.md" in refused.stderr, refused.stderr
    orphan.unlink()

    index = tmp_path / "docs" / "index.md"
    index.write_text(index.read_text() + "\n[gone](no-such-page.md)\n")
    refused = _build_site(tmp_path)
    assert refused.returncode != 0 and "no-such-page.md" in refused.stderr, refused.stderr


def test_readme_links_resolve_in_a_clone() -> None:
    """The README is read outside the site (on a forge, in a clone): each relative link names a file that exists."""
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", (ROOT / "README.md").read_text())
    local = [link for link in links if "://" not in link]
    assert "docs/index.md" in local and "docs/quickstart.md" in local
    assert [link for link in local if not (ROOT / link).exists()] == []
