"""Remote repository pieces that need no network: path safety, safe archive extraction, URIs, settings, caching."""

from __future__ import annotations

import io
import os
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from inferd.archives import extract_archive
from inferd.paths import UnsafePathError, safe_join
from inferd.repository.cache import default_cache_dir
from inferd.repository.mirror import MissingExtraError
from inferd.repository.remote import RemoteRepository
from inferd.repository.store_options import S3Settings
from inferd.repository.uris import is_remote, local_path, redact

# ---- safe_join ----


def test_safe_join_joins_inside_the_root(tmp_path: Path) -> None:
    assert safe_join(tmp_path, "m", "1/model.onnx") == tmp_path / "m" / "1" / "model.onnx"
    assert safe_join(tmp_path, "m/./1//model.onnx") == tmp_path / "m" / "1" / "model.onnx"
    assert safe_join(tmp_path) == tmp_path
    assert safe_join(tmp_path, "a/b/../../c".replace("..", "dotdot")) == tmp_path / "a/b/dotdot/dotdot/c"


@pytest.mark.parametrize("part", ["..", "../x", "m/../../etc/x", "m/..", "a/b/../../../c"])
def test_safe_join_refuses_parent_references(tmp_path: Path, part: str) -> None:
    with pytest.raises(UnsafePathError, match=r"'\.\.' is not allowed"):
        safe_join(tmp_path, part)


@pytest.mark.parametrize("part", ["/etc/passwd", "//server/share", "\\x"])
def test_safe_join_refuses_absolute_paths(tmp_path: Path, part: str) -> None:
    with pytest.raises(UnsafePathError, match="absolute"):
        safe_join(tmp_path, "m", part)


def test_safe_join_refuses_nul(tmp_path: Path) -> None:
    with pytest.raises(UnsafePathError, match="NUL"):
        safe_join(tmp_path, "m\x00x")


def test_safe_join_refuses_a_symlink_out_of_the_tree(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "escape").symlink_to(outside)
    (root / "inner").mkdir()
    (root / "alias").symlink_to(root / "inner")
    with pytest.raises(UnsafePathError, match="outside"):
        safe_join(root, "escape/x")
    with pytest.raises(UnsafePathError, match="outside"):
        safe_join(root, "escape")
    assert safe_join(root, "alias/x") == root / "alias" / "x"  # a link that stays inside is fine


def test_unsafe_path_error_is_a_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        safe_join(tmp_path, "../x")


# ---- archives ----


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _file(name: str) -> tarfile.TarInfo:
    return tarfile.TarInfo(name)


def _link(name: str, target: str, hard: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.LNKTYPE if hard else tarfile.SYMTYPE
    info.linkname = target
    return info


def _assert_nothing_outside(tmp_path: Path, dest: Path) -> None:
    written = {p.name for p in tmp_path.iterdir()}
    assert written <= {"a.tar.gz", "a.zip", dest.name}, written


def test_tar_extracts_a_repository_with_an_inner_link(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "a.tar.gz", [
        (_file("m/config.pbtxt"), b"name: 'm'"),
        (_file("m/1/model.onnx"), b"onnx"),
        (_link("m/2/model.onnx", "../1/model.onnx"), None),
    ])
    dest = tmp_path / "out"
    extract_archive(archive, dest)
    assert (dest / "m/config.pbtxt").read_bytes() == b"name: 'm'"
    assert (dest / "m/2/model.onnx").read_bytes() == b"onnx"


@pytest.mark.parametrize(("member", "message"), [
    ((_file("../evil"), b"x"), r"\.\."),
    ((_file("m/../../evil"), b"x"), r"\.\."),
    ((_file("/tmp/inferd-evil"), b"x"), "absolute"),
    ((_link("m/link", "/etc/passwd"), None), "absolute"),
    ((_link("m/link", "../../evil"), None), "outside"),
    ((_link("m/hard", "../evil", hard=True), None), "outside"),
])
def test_tar_refuses_members_that_leave_the_folder(tmp_path: Path, member: tuple[tarfile.TarInfo, bytes | None],
                                                   message: str) -> None:
    archive = _tar(tmp_path / "a.tar.gz", [(_file("m/config.pbtxt"), b"ok"), member])
    dest = tmp_path / "out"
    with pytest.raises(UnsafePathError, match=message):
        extract_archive(archive, dest)
    _assert_nothing_outside(tmp_path, dest)
    assert not (dest / "m").exists()  # checked before anything is written


def test_tar_refuses_writing_through_a_link(tmp_path: Path) -> None:
    # The link itself points inside, but a later member with the link's name as a folder would follow it.
    (tmp_path / "out").mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "out" / "sneaky").symlink_to(outside)  # left by an earlier extraction, say
    archive = _tar(tmp_path / "a.tar.gz", [(_file("sneaky/evil"), b"x")])
    with pytest.raises(UnsafePathError, match="outside"):
        extract_archive(archive, tmp_path / "out")
    assert not (outside / "evil").exists()


def test_tar_refuses_device_files(tmp_path: Path) -> None:
    fifo = tarfile.TarInfo("m/fifo")
    fifo.type = tarfile.FIFOTYPE
    archive = _tar(tmp_path / "a.tar.gz", [(fifo, None)])
    with pytest.raises(UnsafePathError, match="FIFO"):
        extract_archive(archive, tmp_path / "out")


def _zip(path: Path, members: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
        for name, target in (links or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o120777 << 16)  # a symbolic link, as Info-ZIP stores one
            archive.writestr(info, target)
    return path


def test_zip_extracts(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "a.zip", {"m/config.pbtxt": b"c", "m/1/model.onnx": b"onnx"},
                   {"m/2/model.onnx": "../1/model.onnx"})
    extract_archive(archive, tmp_path / "out")
    assert (tmp_path / "out/m/1/model.onnx").read_bytes() == b"onnx"
    assert (tmp_path / "out/m/2/model.onnx").is_symlink()
    assert (tmp_path / "out/m/2/model.onnx").read_bytes() == b"onnx"


@pytest.mark.parametrize(("members", "links", "message"), [
    ({"../evil": b"x"}, {}, r"\.\."),
    ({"m/../../evil": b"x"}, {}, r"\.\."),
    ({"/tmp/inferd-evil": b"x"}, {}, "absolute"),
    ({"m/c": b"x"}, {"m/link": "/etc/passwd"}, "absolute"),
    ({"m/c": b"x"}, {"m/link": "../../evil"}, "outside"),
])
def test_zip_refuses_members_that_leave_the_folder(tmp_path: Path, members: dict[str, bytes],
                                                   links: dict[str, str], message: str) -> None:
    archive = _zip(tmp_path / "a.zip", members, links)
    dest = tmp_path / "out"
    with pytest.raises(UnsafePathError, match=message):
        extract_archive(archive, dest)
    _assert_nothing_outside(tmp_path, dest)


def test_not_an_archive(tmp_path: Path) -> None:
    (tmp_path / "x.tar.gz").write_bytes(b"not an archive")
    with pytest.raises(ValueError, match="neither a tar nor a zip"):
        extract_archive(tmp_path / "x.tar.gz", tmp_path / "out")


# ---- URIs and settings ----


@pytest.mark.parametrize(("uri", "remote"), [
    ("s3://bucket/prefix", True), ("gs://b", True), ("az://c/p", True), ("https://h/x.tar.gz", True),
    ("file:///models", True), ("pvc://claim/models", True),
    ("/models", False), ("models", False), ("C:\\models", False), ("C:/models", False), ("./s3:/x", False),
])
def test_is_remote(uri: str, remote: bool) -> None:
    assert is_remote(uri) is remote


def test_local_uris(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("INFERD_PVC_MOUNT_PATH", raising=False)
    assert local_path("file:///srv/models") == Path("/srv/models")
    assert local_path("file://localhost/srv/my%20models") == Path("/srv/my models")
    assert local_path("pvc://claim/triton/models") == Path("/mnt/pvc/triton/models")  # as KServe mounts it
    assert local_path("pvc://claim") == Path("/mnt/pvc")
    monkeypatch.setenv("INFERD_PVC_MOUNT_PATH", str(tmp_path))
    assert local_path("pvc://claim/models") == tmp_path / "models"
    with pytest.raises(UnsafePathError):
        local_path("pvc://claim/../../etc")


def test_file_uri_is_served_in_place(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    repo = RemoteRepository(f"file://{tmp_path}", tmp_path / "cache")
    assert repo.is_local
    assert repo.sync() == tmp_path
    assert not (tmp_path / "cache").exists()
    with pytest.raises(FileNotFoundError, match="not a folder"):
        RemoteRepository(f"file://{tmp_path}/missing", tmp_path / "cache").sync()


def test_unsupported_scheme(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unsupported repository URI scheme 'ftp://'"):
        RemoteRepository("ftp://host/models", tmp_path)
    with pytest.raises(ValueError, match="not a repository URI"):
        RemoteRepository("/models", tmp_path)


_S3_ENV = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "S3_ENDPOINT", "S3_USE_HTTPS", "AWS_REGION",
           "AWS_DEFAULT_REGION", "AWS_ANONYMOUS", "awsAnonymousCredential", "S3_VERIFY_SSL")


@pytest.fixture
def clean_s3_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in _S3_ENV:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_s3_settings_from_kserve_environment(clean_s3_env: pytest.MonkeyPatch) -> None:
    assert S3Settings.resolve().fsspec_options() == {}
    clean_s3_env.setenv("S3_ENDPOINT", "minio.local:9000")
    clean_s3_env.setenv("S3_USE_HTTPS", "0")
    clean_s3_env.setenv("AWS_REGION", "eu-west-3")
    clean_s3_env.setenv("awsAnonymousCredential", "true")
    clean_s3_env.setenv("S3_VERIFY_SSL", "0")
    settings = S3Settings.resolve()
    assert settings.endpoint_url == "http://minio.local:9000"
    assert settings.fsspec_options() == {
        "endpoint_url": "http://minio.local:9000", "use_ssl": False, "anon": True,
        "client_kwargs": {"region_name": "eu-west-3", "verify": False},
    }


def test_s3_settings_precedence(clean_s3_env: pytest.MonkeyPatch) -> None:
    clean_s3_env.setenv("S3_ENDPOINT", "low:1")
    clean_s3_env.setenv("AWS_ENDPOINT_URL", "http://middle:2")
    assert S3Settings.resolve().endpoint_url == "http://middle:2"
    clean_s3_env.setenv("AWS_ENDPOINT_URL_S3", "http://high:3")
    assert S3Settings.resolve().endpoint_url == "http://high:3"
    assert S3Settings.resolve(endpoint_url="https://flag:4").endpoint_url == "https://flag:4"
    clean_s3_env.setenv("AWS_ANONYMOUS", "1")
    assert S3Settings.resolve(anonymous=False).anonymous is False
    clean_s3_env.setenv("S3_USE_HTTPS", "maybe")
    with pytest.raises(ValueError, match="S3_USE_HTTPS"):
        S3Settings.resolve()


def test_cache_dir_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("INFERD_CACHE_DIR", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    assert RemoteRepository("s3://bucket/p").cache_dir == tmp_path / "c"
    monkeypatch.delenv("INFERD_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "inferd" / "repositories"


def test_cache_folder_depends_on_uri_and_endpoint(clean_s3_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    a = RemoteRepository("s3://bucket/p", tmp_path)
    assert RemoteRepository("s3://bucket/p/", tmp_path).mirror_dir == a.mirror_dir
    assert RemoteRepository("s3://bucket/q", tmp_path).mirror_dir != a.mirror_dir
    assert RemoteRepository("s3://bucket/p", tmp_path, s3_endpoint="http://other:1").mirror_dir != a.mirror_dir
    assert a.mirror_dir.parent == tmp_path


def test_redact_hides_credentials() -> None:
    assert redact("https://user:secret@host/m.tar.gz?X-Amz-Signature=abc") == "https://host/m.tar.gz?…"
    assert redact("s3://bucket/prefix") == "s3://bucket/prefix"


def test_missing_extra_names_the_pip_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "fsspec", None)  # as if not installed
    with pytest.raises(MissingExtraError, match=r"pip install 'inferd\[s3\]'"):
        RemoteRepository("s3://bucket/prefix", tmp_path).sync()


def test_missing_filesystem_package_names_the_pip_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pytest.importorskip("fsspec")
    monkeypatch.setitem(sys.modules, "gcsfs", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'inferd\[gcs\]'"):
        RemoteRepository("gs://bucket/prefix", tmp_path).sync()
    monkeypatch.setitem(sys.modules, "adlfs", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'inferd\[azure\]'"):
        RemoteRepository("https://account.blob.core.windows.net/container/models", tmp_path).sync()


# ---- an archive served from a local file: extraction, unwrapping, reuse ----


def _repository_tar(path: Path, constant: bytes, wrapper: str = "models/") -> Path:
    return _tar(path, [(_file(f"{wrapper}m/config.pbtxt"), b"name: 'm'"), (_file(f"{wrapper}m/1/model.onnx"),
                                                                           constant)])


def test_local_archive_is_extracted_once_and_again_when_it_changes(tmp_path: Path) -> None:
    archive = _repository_tar(tmp_path / "repo.tar.gz", b"v1")
    repo = RemoteRepository(f"file://{archive}", tmp_path / "cache")
    assert not repo.is_local
    root = repo.sync()
    assert root.parent == repo.mirror_dir and root.name == "models"  # the lone wrapper folder is the repository
    assert (root / "m/1/model.onnx").read_bytes() == b"v1"
    assert repo.last_report.downloaded == ["repo.tar.gz"]
    assert RemoteRepository(f"file://{archive}", tmp_path / "cache").sync() == root
    _repository_tar(tmp_path / "repo.tar.gz", b"v2")
    os.utime(archive, ns=(1, 1))
    assert repo.sync() == root
    assert repo.last_report.downloaded == ["repo.tar.gz"]
    assert (root / "m/1/model.onnx").read_bytes() == b"v2"
    repo.sync()
    assert not repo.last_report.changed


def test_archive_of_models_at_the_top_is_not_unwrapped(tmp_path: Path) -> None:
    archive = _repository_tar(tmp_path / "repo.tar.gz", b"v1", wrapper="")
    repo = RemoteRepository(f"file://{archive}", tmp_path / "cache")
    root = repo.sync()
    assert root == repo.mirror_dir
    assert (root / "m/config.pbtxt").exists()


def test_unsafe_archive_leaves_the_previous_tree(tmp_path: Path) -> None:
    archive = _repository_tar(tmp_path / "repo.tar.gz", b"v1")
    repo = RemoteRepository(f"file://{archive}", tmp_path / "cache")
    root = repo.sync()
    _tar(archive, [(_file("models/m/config.pbtxt"), b"x"), (_file("../../evil"), b"x")])
    os.utime(archive, ns=(2, 2))
    with pytest.raises(UnsafePathError):
        repo.sync()
    assert (root / "m/1/model.onnx").read_bytes() == b"v1"
    assert not (tmp_path / "evil").exists()


# ---- the log and the helper for callers ----


def test_progress_bar_in_the_log(caplog: pytest.LogCaptureFixture) -> None:
    from inferd.repository.progress import ProgressLog as _ProgressLog

    with caplog.at_level("INFO", logger="inferd.repository"):
        progress = _ProgressLog("m/1/model.onnx", 40_000_000, interval=0)
        progress.update(20_000_000)
        progress.finish()
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "downloading m/1/model.onnx (40.0 MB)"
    assert lines[1] == "downloading m/1/model.onnx [##########..........]  50% 20.0 MB / 40.0 MB"
    assert lines[2].startswith("downloaded m/1/model.onnx 20.0 MB in ")


def test_sync_repositories_mixes_paths_and_uris(tmp_path: Path) -> None:
    from inferd.repository.remote import sync_repositories

    archive = _repository_tar(tmp_path / "repo.tar.gz", b"v1")
    paths, remotes = sync_repositories([str(tmp_path), f"file://{tmp_path}", f"file://{archive}"], tmp_path / "c")
    assert paths[:2] == [tmp_path, tmp_path]
    assert (paths[2] / "m/1/model.onnx").read_bytes() == b"v1"
    assert [r.uri for r in remotes] == [f"file://{archive}"]  # only what a poll must sync again
