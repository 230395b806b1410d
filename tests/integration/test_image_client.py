"""`inferd infer` against a live server: NVIDIA image_client.py's lines, with the same top classes as the model run
in-process by onnxruntime on the image prepared the way image_client.py prepares it (written out here, not taken
from the client); and tensors from .json / .npy files for any model.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from image_models import LABELS, SIZE, add_classifier, classifier_model, draw_image
from models import SIMPLE_CONFIG, simple_model, write_model
from serving import INFERD, ServerProcess, start_server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("infer-repo") / "models"
    add_classifier(repo, "classifier", "NCHW", batching=True)
    add_classifier(repo, "classifier_nhwc", "NHWC", batching=True)
    add_classifier(repo, "classifier_single", "NCHW", batching=False)
    write_model(repo, "simple", simple_model(), SIMPLE_CONFIG)
    process = start_server(repo, tmp_path_factory.mktemp("infer-logs") / "inferd.log")
    yield process
    process.stop()


def infer(server: ServerProcess, protocol: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    url = server.http_url if protocol == "http" else server.grpc_url
    return subprocess.run([str(INFERD), "infer", "-u", url, "-i", protocol, *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def prepared(path: Path, scaling: str, layout: str) -> np.ndarray:
    """image_client.py's preprocess for an RGB FP32 input of SIZE x SIZE."""
    image = np.array(Image.open(path).convert("RGB").resize((SIZE, SIZE), Image.Resampling.BILINEAR))
    typed = image.astype(np.float32)
    if scaling == "INCEPTION":
        typed = typed / 127.5 - 1
    elif scaling == "VGG":
        typed = typed - np.asarray((123, 117, 104), dtype=np.float32)
    return np.transpose(typed, (2, 0, 1)) if layout == "NCHW" else typed


def expected_lines(batches: list[list[Path]], scaling: str, layout: str, classes: int) -> list[str]:
    """What image_client.py prints, with the scores onnxruntime gives in this process."""
    session = ort.InferenceSession(classifier_model(layout, batching=True), providers=["CPUExecutionProvider"])
    lines = []
    for number, batch in enumerate(batches, start=1):
        lines.append(f"Request {number}, batch size {len(batch)}")
        scores = session.run(None, {"image": np.stack([prepared(p, scaling, layout) for p in batch])})[0]
        for row in scores:
            for index in np.argsort(-row, kind="stable")[:classes]:
                lines.append(f"    {row[index]:f} ({index}) = {LABELS[index]}")
    return [*lines, "PASS"]


def test_one_image_over_http_as_image_client_prints(server: ServerProcess, tmp_path: Path) -> None:
    image = draw_image(tmp_path / "mug.jpg", seed=1)
    result = infer(server, "http", "-m", "classifier", "-c", "3", "-s", "INCEPTION", image)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == expected_lines([[image]], "INCEPTION", "NCHW", 3)


def test_a_folder_in_batches_over_grpc_async_nhwc(server: ServerProcess, tmp_path: Path) -> None:
    """Three images in batches of two: the second batch starts over with the first image, as image_client.py."""
    folder = tmp_path / "images"
    images = [draw_image(folder / f"{name}.png", seed=i) for i, name in enumerate(("a", "b", "c"), start=10)]
    result = infer(server, "grpc", "-m", "classifier_nhwc", "-c", "2", "-s", "VGG", "-b", "2", "--async", folder)
    assert result.returncode == 0, result.stdout + result.stderr
    expected = expected_lines([[images[0], images[1]], [images[2], images[0]]], "VGG", "NHWC", 2)
    assert result.stdout.splitlines() == expected


def test_a_model_without_batching(server: ServerProcess, tmp_path: Path) -> None:
    image = draw_image(tmp_path / "one.png", seed=3)
    refused = infer(server, "http", "-m", "classifier_single", "-b", "2", image)
    assert refused.returncode == 1
    assert refused.stdout.strip() == "ERROR: This model doesn't support batching."
    result = infer(server, "http", "-m", "classifier_single", "-c", "4", image)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == expected_lines([[image]], "NONE", "NCHW", 4)


def test_a_model_that_is_not_an_image_classifier(server: ServerProcess, tmp_path: Path) -> None:
    result = infer(server, "http", "-m", "simple", draw_image(tmp_path / "x.png", seed=4))
    assert result.returncode == 1
    assert "expecting 1 input, got 2" in result.stderr


def test_tensors_from_json_printed_as_json(server: ServerProcess, tmp_path: Path) -> None:
    a, b = np.arange(16, dtype=np.int32).reshape(1, 16), np.full((1, 16), 5, dtype=np.int32)
    request = tmp_path / "inputs.json"
    request.write_text(json.dumps({"INPUT0": a.tolist(), "INPUT1": b.tolist()}))
    result = infer(server, "grpc", "-m", "simple", "--output-format", "json", request)
    assert result.returncode == 0, result.stderr
    outputs = {o["name"]: o for o in json.loads(result.stdout)["outputs"]}
    assert outputs["OUTPUT0"]["data"] == (a + b).reshape(-1).tolist()
    assert outputs["OUTPUT1"] == {"name": "OUTPUT1", "datatype": "INT32", "shape": [1, 16],
                                  "data": (a - b).reshape(-1).tolist()}


def test_tensors_from_npy_printed_as_a_table(server: ServerProcess, tmp_path: Path) -> None:
    a, b = np.ones((2, 16), dtype=np.int32), np.arange(32, dtype=np.int32).reshape(2, 16)
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", b)
    result = infer(server, "http", "-m", "simple", f"INPUT1={tmp_path / 'b.npy'}", f"INPUT0={tmp_path / 'a.npy'}")
    assert result.returncode == 0, result.stderr
    blocks = dict(block.split("\n", 1) for block in result.stdout.strip().split("\n\n"))
    assert blocks["OUTPUT0  INT32  [2, 16]"] == np.array2string(a + b, threshold=64)
    assert blocks["OUTPUT1  INT32  [2, 16]"] == np.array2string(a - b, threshold=64)


def test_a_folder_over_http_async(server: ServerProcess, tmp_path: Path) -> None:
    """--async over HTTP: both requests sent before either answer is read; printed in request order."""
    folder = tmp_path / "images"
    images = [draw_image(folder / f"{i}.jpg", seed=20 + i) for i in range(4)]
    result = infer(server, "http", "-m", "classifier", "-c", "1", "-s", "INCEPTION", "-b", "2", "-a", folder)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == expected_lines([images[:2], images[2:]], "INCEPTION", "NCHW", 1)
