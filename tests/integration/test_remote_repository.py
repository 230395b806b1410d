"""Remote repositories against a real S3-compatible server: moto's standalone server on 127.0.0.1, started here.

The bucket holds a Triton repository of tiny ONNX models; `RemoteRepository.sync()` mirrors it into a cache folder,
downloads nothing when nothing changed, and picks up a version uploaded while the test runs. The last test serves the
bucket with `inferd serve --model-repository s3://...` in poll mode.
"""

from __future__ import annotations

import contextlib
import http.server
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest

from inferd.paths import UnsafePathError
from inferd.repository import ModelRepository, version_dirs
from inferd.repository.remote import RemoteRepository
from models import SIMPLE, SIMPLE_CONFIG, add_constant_model, simple_model, tensor_config
from serving import HOST, ServerProcess, free_ports

BUCKET = "models"
ADD = "add"  # INT32 [batch, n] -> INPUT0 + version number
ADD_CONFIG = f"""
name: "{ADD}"
platform: "onnxruntime_onnx"
max_batch_size: 8
{tensor_config("input", "INPUT0", "TYPE_INT32", [-1])}
{tensor_config("output", "OUTPUT0", "TYPE_INT32", [-1])}
"""


# ---- the S3 server ----


@pytest.fixture(scope="module")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`python -m moto.server` on a free port of 127.0.0.1; stopped by its PID."""
    (port,) = free_ports(1)
    log_path = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)],
                                   stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"http://{HOST}:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"moto exited with {process.returncode}:\n{log_path.read_text()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{endpoint}/moto-api/", timeout=2).status_code < 500:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"moto did not answer within 60 s:\n{log_path.read_text()}")
            time.sleep(0.1)
        yield endpoint
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait(timeout=10)


@pytest.fixture
def s3_env(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """Credentials and endpoint as the standard variables carry them (and no ~/.aws files of this machine)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("INFERD_CACHE_DIR", str(tmp_path / "cache"))
    for name in ("AWS_ENDPOINT_URL_S3", "S3_ENDPOINT", "S3_USE_HTTPS", "AWS_ANONYMOUS", "AWS_PROFILE",
                 "AWS_SESSION_TOKEN", "awsAnonymousCredential"):
        monkeypatch.delenv(name, raising=False)
    return moto_endpoint


@pytest.fixture
def s3(s3_env: str) -> Iterator[Any]:
    """A boto3 client and the bucket; each test keeps its repository under a prefix of its own name."""
    client = boto3.client("s3", endpoint_url=s3_env)
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
        client.create_bucket(Bucket=BUCKET)
    yield client


def _prefix(request: pytest.FixtureRequest) -> str:
    return request.node.name.replace("[", "-").replace("]", "")


def _put(s3: Any, key: str, body: bytes | str) -> None:
    s3.put_object(Bucket=BUCKET, Key=key, Body=body.encode() if isinstance(body, str) else body)


def _upload_repository(s3: Any, prefix: str) -> dict[str, bytes]:
    files = {
        f"{SIMPLE}/config.pbtxt": SIMPLE_CONFIG.encode(),
        f"{SIMPLE}/1/model.onnx": simple_model(),
        f"{ADD}/config.pbtxt": ADD_CONFIG.encode(),
        f"{ADD}/1/model.onnx": add_constant_model(1),
    }
    for key, body in files.items():
        _put(s3, f"{prefix}/{key}", body)
    return files


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ---- sync ----


def test_sync_caches_and_picks_up_a_new_version(s3: Any, request: pytest.FixtureRequest, tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    prefix = _prefix(request)
    files = _upload_repository(s3, prefix)
    repo = RemoteRepository(f"s3://{BUCKET}/{prefix}", tmp_path / "cache")

    with caplog.at_level("INFO", logger="inferd.repository"):
        root = repo.sync()
    assert root == repo.mirror_dir and root.is_relative_to(tmp_path / "cache")
    assert _tree(root) == files
    assert sorted(repo.last_report.downloaded) == sorted(files)
    assert "downloaded add/1/model.onnx" in caplog.text
    models, problems = ModelRepository([root]).scan()
    assert sorted(models) == [ADD, SIMPLE] and not problems

    # Nothing changed: one listing, nothing downloaded, the same folder; a new instance reuses the cache too.
    assert repo.sync() == root
    assert repo.last_report.downloaded == [] and repo.last_report.unchanged == len(files)
    again = RemoteRepository(f"s3://{BUCKET}/{prefix}", tmp_path / "cache")
    assert again.sync() == root and again.last_report.downloaded == []

    # Version 2 uploaded while serving: the next sync has it, and only it.
    _put(s3, f"{prefix}/{ADD}/2/model.onnx", add_constant_model(2))
    assert repo.sync() == root
    assert repo.last_report.downloaded == [f"{ADD}/2/model.onnx"]
    assert sorted(version_dirs(root / ADD)) == [1, 2]
    assert (root / ADD / "2" / "model.onnx").read_bytes() == add_constant_model(2)


def test_sync_follows_changes_of_the_same_size_and_removals(s3: Any, request: pytest.FixtureRequest,
                                                            tmp_path: Path) -> None:
    prefix = _prefix(request)
    _upload_repository(s3, prefix)
    repo = RemoteRepository(f"s3://{BUCKET}/{prefix}", tmp_path / "cache")
    root = repo.sync()

    changed = ADD_CONFIG.replace("max_batch_size: 8", "max_batch_size: 4")  # same size: only the ETag tells
    assert len(changed) == len(ADD_CONFIG)
    _put(s3, f"{prefix}/{ADD}/config.pbtxt", changed)
    s3.delete_object(Bucket=BUCKET, Key=f"{prefix}/{SIMPLE}/1/model.onnx")
    s3.delete_object(Bucket=BUCKET, Key=f"{prefix}/{SIMPLE}/config.pbtxt")
    repo.sync()
    assert repo.last_report.downloaded == [f"{ADD}/config.pbtxt"]
    assert sorted(repo.last_report.removed) == [f"{SIMPLE}/1/model.onnx", f"{SIMPLE}/config.pbtxt"]
    assert (root / ADD / "config.pbtxt").read_text() == changed
    assert not (root / SIMPLE).exists()  # folders left empty go too

    # A file damaged or deleted in the cache is fetched again.
    (root / ADD / "1" / "model.onnx").write_bytes(b"oops")
    repo.sync()
    assert repo.last_report.downloaded == [f"{ADD}/1/model.onnx"]
    assert (root / ADD / "1" / "model.onnx").read_bytes() == add_constant_model(1)


def test_folder_markers_become_empty_folders(s3: Any, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    prefix = _prefix(request)
    _put(s3, f"{prefix}/{ADD}/config.pbtxt", ADD_CONFIG)
    _put(s3, f"{prefix}/{ADD}/1/", b"")  # what "create folder" in a console leaves
    root = RemoteRepository(f"s3://{BUCKET}/{prefix}", tmp_path / "cache").sync()
    assert (root / ADD / "1").is_dir()
    assert list((root / ADD / "1").iterdir()) == []


def test_a_key_that_leaves_the_repository_is_refused(s3: Any, request: pytest.FixtureRequest,
                                                     tmp_path: Path) -> None:
    prefix = _prefix(request)
    _upload_repository(s3, prefix)
    _put(s3, f"{prefix}/m/../../../../evil.txt", b"evil")
    repo = RemoteRepository(f"s3://{BUCKET}/{prefix}", tmp_path / "a" / "b" / "cache")
    with pytest.raises(UnsafePathError, match=r"m/\.\./\.\./\.\./\.\./evil\.txt.*'\.\.'"):
        repo.sync()
    assert not list(tmp_path.rglob("evil.txt"))
    assert not repo.mirror_dir.exists() or not any(repo.mirror_dir.rglob("*.onnx"))  # refused before downloading


def test_a_missing_bucket_is_an_error(s3_env: str, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no-such-bucket"):
        RemoteRepository("s3://no-such-bucket/models", tmp_path / "cache").sync()


def test_an_empty_prefix_is_an_empty_repository(s3: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = RemoteRepository(f"s3://{BUCKET}/nothing-here", tmp_path / "cache").sync()
    assert root.is_dir() and list(root.iterdir()) == []
    assert "holds no files" in caplog.text


def _repository_archive(constant: int) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in ((f"models/{ADD}/config.pbtxt", ADD_CONFIG.encode()),
                           (f"models/{ADD}/1/model.onnx", add_constant_model(constant))):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_an_archive_in_the_bucket_is_extracted(s3: Any, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    key = f"{_prefix(request)}/repository.tar.gz"
    _put(s3, key, _repository_archive(1))
    repo = RemoteRepository(f"s3://{BUCKET}/{key}", tmp_path / "cache")
    root = repo.sync()
    assert (root / ADD / "1" / "model.onnx").read_bytes() == add_constant_model(1)
    repo.sync()
    assert not repo.last_report.changed
    _put(s3, key, _repository_archive(5))
    assert repo.sync() == root
    assert (root / ADD / "1" / "model.onnx").read_bytes() == add_constant_model(5)


def test_anonymous_access_to_a_public_bucket(s3: Any, request: pytest.FixtureRequest, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    public = "public-models"
    with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
        s3.create_bucket(Bucket=public)
    policy = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": "*", "Action": ["s3:GetObject"], "Resource": f"arn:aws:s3:::{public}/*"},
        {"Effect": "Allow", "Principal": "*", "Action": ["s3:ListBucket"], "Resource": f"arn:aws:s3:::{public}"},
    ]}
    s3.put_bucket_policy(Bucket=public, Policy=json.dumps(policy))
    prefix = _prefix(request)
    s3.put_object(Bucket=public, Key=f"{prefix}/{ADD}/config.pbtxt", Body=ADD_CONFIG.encode())
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_ANONYMOUS", "true")
    root = RemoteRepository(f"s3://{public}/{prefix}", tmp_path / "cache").sync()
    assert (root / ADD / "config.pbtxt").read_text() == ADD_CONFIG


# ---- an archive over http ----


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def http_folder(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A plain HTTP server on 127.0.0.1 serving a folder (it answers If-Modified-Since with 304)."""
    folder = tmp_path / "www"
    folder.mkdir()
    server = http.server.ThreadingHTTPServer((HOST, 0), lambda *a: _Quiet(*a, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield folder, f"http://{HOST}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_an_archive_over_http_is_downloaded_once(http_folder: tuple[Path, str], tmp_path: Path) -> None:
    folder, base = http_folder
    archive = folder / "repository.tar.gz"
    archive.write_bytes(_repository_archive(1))
    os.utime(archive, (1_700_000_000, 1_700_000_000))
    repo = RemoteRepository(f"{base}/repository.tar.gz?token=secret", tmp_path / "cache")
    root = repo.sync()
    assert repo.last_report.downloaded == ["repository.tar.gz"]
    assert (root / ADD / "1" / "model.onnx").read_bytes() == add_constant_model(1)
    assert "secret" not in repr(repo)
    repo.sync()
    assert not repo.last_report.changed  # 304 Not Modified
    archive.write_bytes(_repository_archive(3))
    os.utime(archive, (1_800_000_000, 1_800_000_000))
    assert repo.sync() == root
    assert repo.last_report.downloaded == ["repository.tar.gz"]
    assert (root / ADD / "1" / "model.onnx").read_bytes() == add_constant_model(3)


def test_an_http_url_that_is_not_there(http_folder: tuple[Path, str], tmp_path: Path) -> None:
    _, base = http_folder
    with pytest.raises(OSError, match="HTTP 404"):
        RemoteRepository(f"{base}/missing.tar.gz", tmp_path / "cache").sync()


# ---- end to end: inferd serve --model-repository s3://... ----


def _infer_add(base_url: str) -> list[int]:
    body = {"inputs": [{"name": "INPUT0", "datatype": "INT32", "shape": [1, 3], "data": [10, 20, 30]}]}
    response = httpx.post(f"{base_url}/v2/models/{ADD}/infer", json=body, timeout=30)
    assert response.status_code == 200, response.text
    return list(response.json()["outputs"][0]["data"])


def test_serve_s3_repository_polls_a_new_version(s3: Any, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    prefix = _prefix(request)
    _upload_repository(s3, prefix)
    server = ServerProcess([], tmp_path / "inferd.log", "--model-repository", f"s3://{BUCKET}/{prefix}",
                           "--model-control-mode", "poll", "--repository-poll-secs", "0.5")
    try:
        server.wait_live()
        deadline = time.monotonic() + 60
        while httpx.get(f"{server.base_url}/v2/models/{ADD}/ready", timeout=5).status_code != 200:
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.2)
        assert _infer_add(server.base_url) == [11, 21, 31]
        assert any((tmp_path / "cache").rglob("model.onnx")), "the server should cache under $INFERD_CACHE_DIR"

        _put(s3, f"{prefix}/{ADD}/2/model.onnx", add_constant_model(2))  # the latest version is served
        deadline = time.monotonic() + 60
        while _infer_add(server.base_url) != [12, 22, 32]:
            assert time.monotonic() < deadline, f"version 2 was not picked up:\n{server.log()}"
            time.sleep(0.3)
    finally:
        server.stop()
