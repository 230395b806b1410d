"""A TorchServe archive under the name the archiver gave it, dropped into a Triton-style version folder.

`torch-model-archiver --model-name m` writes `m.mar`; users copy that file into `m/1/` (no config.pbtxt). Any single
`.mar` in a version folder is the model; it answers over V2 (tritonclient) and TorchServe's `/predictions/m`. Two
archives in one version folder are refused with the reason, and the server goes on serving.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient

from clients import unavailable_reason
from mar_archives import build_upper_mar, upper
from serving import ServerProcess, start_server

pytest.importorskip("torch")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

SAME = "m"  # m/1/m.mar: the archiver's file name is the model's name
RENAMED = "shop"  # shop/1/resnet-v2.mar: any one .mar in the version folder
TWO = "two"  # two/1/a.mar and two/1/b.mar: which one is meant cannot be told


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("mar-layout")
    work, out, models = root / "work", root / "out", root / "models"
    for folder in (SAME, RENAMED, TWO):
        (models / folder / "1").mkdir(parents=True)
    build_upper_mar(work, SAME, out).rename(models / SAME / "1" / f"{SAME}.mar")
    build_upper_mar(work, "resnet-v2", out).rename(models / RENAMED / "1" / "resnet-v2.mar")
    build_upper_mar(work, "a", out).rename(models / TWO / "1" / "a.mar")
    build_upper_mar(work, "b", out).rename(models / TWO / "1" / "b.mar")
    return {"models": models, "cache": root / "cache"}


@pytest.fixture(scope="module")
def server(repo: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = start_server(repo["models"], tmp_path_factory.mktemp("logs") / "inferd-mar-layout.log",
                           "--strict-readiness=false", env={"INFERD_CACHE_DIR": str(repo["cache"])})
    yield process
    process.stop()


def _answer(raw: Any) -> dict[str, Any]:
    doc = json.loads(raw)
    doc.pop("pid")
    return doc


@pytest.mark.parametrize("name", [SAME, RENAMED])
def test_archive_under_its_own_name_answers_over_torchserve(server: ServerProcess, name: str) -> None:
    response = httpx.post(f"{server.base_url}/predictions/{name}", content=b"hello mar",
                          headers={"content-type": "text/plain"}, timeout=60.0)
    assert response.status_code == 200, response.text
    # The manifest's model name is the archiver's, as TorchServe's context gives it to the handler.
    manifest_name = SAME if name == SAME else "resnet-v2"
    assert _answer(response.content) == {**upper("hello mar"), "model": manifest_name}


@pytest.mark.parametrize("name", [SAME, RENAMED])
def test_archive_under_its_own_name_answers_over_v2(server: ServerProcess, name: str) -> None:
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        body = httpclient.InferInput("body", [2], "BYTES")
        body.set_data_from_numpy(np.array([b"first", b"second"], dtype=np.object_))
        result = client.infer(name, [body], outputs=[httpclient.InferRequestedOutput("response")])
        config = client.get_model_config(name)
    finally:
        client.close()
    answers = [_answer(a)["upper"] for a in result.as_numpy("response")]
    assert answers == ["FIRST", "SECOND"]
    assert config["backend"] == "torchserve"


def test_two_archives_in_one_version_folder_are_refused(server: ServerProcess) -> None:
    reason = unavailable_reason(server.base_url, TWO)
    assert "2 .mar files" in reason and "a.mar" in reason and "b.mar" in reason, reason
    assert "default_model_filename" in reason
    missing = httpx.post(f"{server.base_url}/predictions/{TWO}", content=b"x", timeout=30.0)
    assert missing.status_code == 404
    # The server goes on serving the others.
    assert httpx.post(f"{server.base_url}/predictions/{SAME}", content=b"x", timeout=60.0).status_code == 200
