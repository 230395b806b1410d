"""The container entrypoint's decisions: what `inferd serve` command a pod started by KServe, Knative or plain
Kubernetes runs, given what the storage initializer put in /mnt/models and the environment the platform set."""

from __future__ import annotations

from pathlib import Path

import pytest

from inferd.deploy import folder_layout, plan_serve


def _files(root: Path, *paths: str) -> Path:
    for path in paths:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(b"x")
    return root


def test_a_repository_is_served_as_it_is(tmp_path: Path) -> None:
    models = _files(tmp_path / "mnt", "resnet/config.pbtxt", "resnet/1/model.onnx", "bert/1/model.pt")
    plan = plan_serve(models, {}, [])
    assert folder_layout(models) == "repository"
    assert plan.args == [f"--model-repository={models}"]
    assert plan.links == []


@pytest.mark.parametrize(("files", "links"), [
    (["config.pbtxt", "1/model.onnx"], {"": ""}),  # a Triton model folder: served as it is
    (["1/model.onnx"], {"": ""}),  # version folders, no config
    (["model.onnx"], {"1": ""}),  # KServe's storageUri of a folder holding one model file: its version 1
    (["config.pbtxt", "model.onnx"], {"config.pbtxt": "config.pbtxt", "1": ""}),
    (["MLmodel", "model.pkl", "artifacts/x.bin"], {"1": ""}),  # an MLflow model
    (["saved_model.pb", "variables/variables.index"], {"1/model.savedmodel": ""}),  # a TensorFlow SavedModel
])
def test_one_models_folder_is_served_under_the_given_name(tmp_path: Path, files: list[str],
                                                          links: dict[str, str]) -> None:
    models = _files(tmp_path / "mnt", *files)
    plan = plan_serve(models, {}, ["--log-verbose=1"], model_name="densenet", link_dir=tmp_path / "repo")
    assert folder_layout(models) == "model"
    assert plan.args == [f"--model-repository={tmp_path / 'repo'}", "--log-verbose=1"]
    folder = tmp_path / "repo" / "densenet"
    assert plan.links == [(folder / link if link else folder, models / target if target else models)
                          for link, target in links.items()]


def test_the_model_name_comes_from_model_name_then_the_storage_uri(tmp_path: Path) -> None:
    models = _files(tmp_path / "mnt", "model.onnx")
    named = plan_serve(models, {"MODEL_NAME": "from-env", "STORAGE_URI": "s3://b/m/resnet"}, [], link_dir=tmp_path)
    assert named.links == [(tmp_path / "from-env" / "1", models)]
    from_uri = plan_serve(models, {"STORAGE_URI": "s3://bucket/models/resnet50/"}, [], link_dir=tmp_path)
    assert from_uri.links == [(tmp_path / "resnet50" / "1", models)]
    a_file_uri = plan_serve(models, {"STORAGE_URI": "s3://bucket/models/model.onnx"}, [], link_dir=tmp_path)
    assert a_file_uri.links == [(tmp_path / "model" / "1", models)]


def test_torchserve_layout_serves_its_model_store(tmp_path: Path) -> None:
    models = _files(tmp_path / "mnt", "config/config.properties", "model-store/mnist.mar")
    assert plan_serve(models, {}, []).args == [f"--model-repository={models / 'model-store'}"]


def test_an_empty_folder_falls_back_to_storage_uri(tmp_path: Path) -> None:
    (tmp_path / "mnt").mkdir()
    plan = plan_serve(tmp_path / "mnt", {"STORAGE_URI": "s3://bucket/repo"}, [])
    assert plan.args == ["--model-repository=s3://bucket/repo"]
    assert plan_serve(tmp_path / "missing", {"STORAGE_URI": "gs://b/r"}, []).args == ["--model-repository=gs://b/r"]


def test_nothing_to_serve_is_an_error_that_says_so(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="STORAGE_URI is not set"):
        plan_serve(tmp_path / "missing", {}, [])


@pytest.mark.parametrize(("env", "expected"), [
    ({"PORT": "8080"}, ["--http-port=8080"]),  # Knative's port, V2 over HTTP (the default protocol)
    ({"PORT": "8080", "PROTOCOL": "v1"}, ["--http-port=8080"]),  # V1 shares the HTTP port
    ({"PORT": "9000", "PROTOCOL": "grpc-v2"}, ["--grpc-port=9000"]),
    ({"PORT": "8001", "PROTOCOL": "v2"}, ["--http-port=8001", "--grpc-port=8000"]),  # the defaults swap, no clash
    ({"PORT": "8000", "PROTOCOL": "grpc-v2"}, ["--grpc-port=8000", "--http-port=8001"]),
    ({"PROTOCOL": "grpc-v2"}, []),  # no PORT: the image's defaults (8000, 8001)
])
def test_port_and_protocol_choose_the_port_flags(tmp_path: Path, env: dict[str, str], expected: list[str]) -> None:
    models = _files(tmp_path / "mnt", "m/1/model.onnx")
    assert plan_serve(models, env, []).args == [*expected, f"--model-repository={models}"]


def test_flags_given_win_over_the_environment(tmp_path: Path) -> None:
    models = _files(tmp_path / "mnt", "m/1/model.onnx")
    given = ["--http-port=8080", "--model-repository", "/elsewhere"]
    plan = plan_serve(models, {"PORT": "9999", "STORAGE_URI": "s3://b/r"}, given)
    assert plan.args == given


@pytest.mark.parametrize(("env", "message"), [
    ({"PROTOCOL": "v3"}, "expected one of v1, v2, grpc-v2"), ({"PORT": "http"}, "not a port number")])
def test_bad_environment_is_an_error(tmp_path: Path, env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        plan_serve(_files(tmp_path / "mnt", "m/1/model.onnx"), env, [])
