"""The OpenAPI document (`/openapi.json`) against the server it describes.

schemathesis generates requests from the document (valid and invalid ones, a bounded number per operation) and
sends them to a real `inferd serve`: no answer may be a server error or break the document (status codes,
content types, body schemas). And the document must be complete: every route the HTTP app answers is in it.
"""

from __future__ import annotations

import ast
import asyncio
import itertools
import json
import re
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

import inferd.frontends.http as http_frontend
from inferd import Server
from inferd.frontends.http import HttpFrontend
from models import (
    AUTO,
    SIMPLE,
    SIMPLE_STRING,
    SIMPLE_STRING_CONFIG,
    add_auto,
    add_simple,
    simple_string_model,
    write_model,
)
from serving import ServerProcess, start_server

MAX_EXAMPLES = 15  # per operation: the whole run stays well under a minute
HTTP_SOURCES = Path(http_frontend.__file__).parent
DOCUMENT = json.loads((HTTP_SOURCES / "openapi.json").read_text())
METHODS = ("get", "post", "put", "delete", "patch")
# Values for the path parameters when probing the app (a model that exists, its version, a shm region name).
PLACEHOLDERS = {"model_name": SIMPLE, "model_version": "1", "region_name": "region0", "namespace": "default",
                "asset": "dashboard.js"}
NOT_FOUND = (404, b'{"error":"Not Found"}')


def _repository(root: Path) -> Path:
    repo = root / "models"
    repo.mkdir()
    add_simple(repo)
    add_auto(repo)
    write_model(repo, SIMPLE_STRING, simple_string_model(), SIMPLE_STRING_CONFIG)
    return repo


@pytest.fixture(scope="module")
def api_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Explicit model control (so load / unload really run), tracing possible, every model loaded."""
    root = tmp_path_factory.mktemp("openapi")
    process = start_server(_repository(root), root / "server.log", "--model-control-mode=explicit",
                           "--load-model=*", "--trace-config", f"triton,file={root / 'trace.json'}")
    yield process
    process.stop()


# The packaged document (test_document_is_served_as_packaged checks that the server serves exactly this one).
schema = schemathesis.openapi.from_dict(DOCUMENT)


def _aim_at_models(case: Any) -> None:
    """Generated model names rarely name a model: most cases get one that exists instead (picked by a hash of
    the generated name), and the first inputs of half of those get the model's input names, so that requests
    get past the first checks to the deeper ones."""
    name = (case.path_parameters or {}).get("model_name")
    if not isinstance(name, str):
        return
    pick = zlib.crc32(name.encode(errors="replace"))
    model = (None, SIMPLE, SIMPLE_STRING, AUTO)[pick % 4]
    if model is None:
        return
    case.path_parameters["model_name"] = model
    if pick & 4 and isinstance(case.body, dict) and isinstance(case.body.get("inputs"), list):
        for index, item in enumerate(case.body["inputs"][:2]):
            if isinstance(item, dict):
                item["name"] = f"INPUT{index}"


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_server_conforms_to_its_document(case: Any, api_server: ServerProcess) -> None:
    _aim_at_models(case)
    case.call_and_validate(base_url=api_server.base_url, checks=[
        not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance],
        timeout=30)


def test_document_is_served_as_packaged(api_server: ServerProcess) -> None:
    response = httpx.get(f"{api_server.base_url}/openapi.json", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == DOCUMENT
    page = httpx.get(f"{api_server.base_url}/docs", timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "openapi.json" in page.text and "://" not in page.text  # self-contained: nothing fetched elsewhere


# ---- every route of the app is in the document ----

def _templates() -> dict[tuple[str, ...], set[str]]:
    """Documented path templates (as segments) and their methods."""
    return {tuple(filter(None, path.strip("/").split("/"))): {m for m in item if m in METHODS}
            for path, item in DOCUMENT["paths"].items()}


# A path parameter; it may share its segment with a literal, as in TF-Serving's `{model_name}:predict`.
PARAMETER = re.compile(r"\{(\w+)\}")


def _instantiate(template: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(PARAMETER.sub(lambda m: PLACEHOLDERS[m.group(1)], s) for s in template)


def _segment_matches(segment: str, template: str) -> bool:
    literals = PARAMETER.split(template)[::2]  # split() puts the parameter names at the odd places
    return re.fullmatch(".*".join(re.escape(lit) for lit in literals), segment, re.DOTALL) is not None


def _matches(path: tuple[str, ...], template: tuple[str, ...]) -> bool:
    return len(path) == len(template) and all(_segment_matches(p, t) for p, t in zip(path, template, strict=True))


def _vocabulary() -> list[str]:
    """Every word the HTTP app's modules could compare a path segment with: their string constants."""
    words = set(PLACEHOLDERS.values())
    for source in HTTP_SOURCES.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                words.update(w for w in node.value.split("/") if re.fullmatch(r"[a-z0-9][a-z0-9_.\-]{0,40}", w))
    return sorted(words)


@pytest.fixture(scope="module")
def frontend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpFrontend]:
    """The app in-process (model control "none": load / unload only answer 503, nothing changes)."""
    server = Server(_repository(tmp_path_factory.mktemp("routes")))
    yield HttpFrontend(server)
    server.close()


def _answers(frontend: HttpFrontend, method: str, path: tuple[str, ...]) -> int | None:
    """The status the app answers with, or None when it has no such route."""
    status, body, _ = asyncio.run(frontend.handle(method, "/" + "/".join(path), {}, b""))
    return None if (status, body) == NOT_FOUND else status


def test_every_documented_operation_is_routed(frontend: HttpFrontend) -> None:
    for template, methods in _templates().items():
        for method in methods:
            status = _answers(frontend, method.upper(), _instantiate(template))
            assert status is not None and status != 405, (method, template, status)


def test_every_route_is_documented(frontend: HttpFrontend) -> None:
    """Probe the app around every documented path: one or two more segments, or a different last one, made of
    the words the app's code knows. Whatever it answers with GET or POST (anything but its plain 404, or a 405:
    some branches check the method before the rest of the path) must be a documented operation."""
    templates = _templates()
    vocabulary = _vocabulary()
    prefixes = {()} | {_instantiate(t)[:n] for t in templates for n in range(1, len(t) + 1)}
    candidates = set()
    for prefix in prefixes:
        for word in vocabulary:
            candidates.add((*prefix, word))
            if prefix:
                candidates.add((*prefix[:-1], word))
        for first, second in itertools.product(vocabulary, repeat=2):
            candidates.add((*prefix, first, second))

    async def probe() -> list[str]:
        problems = []
        for path in sorted(candidates):
            for method in ("GET", "POST"):
                status, body, _ = await frontend.handle(method, "/" + "/".join(path), {}, b"")
                if (status, body) == NOT_FOUND or status == 405:
                    continue
                if not any(_matches(path, t) and method.lower() in templates[t] for t in templates):
                    problems.append(f"{method} /{'/'.join(path)} answers {status} but is not in the document")
        return problems

    assert asyncio.run(probe()) == []
    assert len(candidates) > 1000  # the probe did cover the neighbourhood


def test_model_names_in_examples_exist() -> None:
    """The document's example model is one the test repositories serve (so examples reach a real model)."""
    assert {SIMPLE, AUTO} >= {p["example"] for item in DOCUMENT["paths"].values() for op in item.values()
                              for p in op.get("parameters", []) if p["name"] == "model_name"}
