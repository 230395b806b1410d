"""inferd.archives: safe tar/zip extraction, its place below repository/ and backends/, and the .mar cache it feeds."""

from __future__ import annotations

import ast
import io
import json
import os
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import inferd.archives
import inferd.paths
from inferd.archives import ARCHIVE_SUFFIXES, extract_archive, is_archive_name
from inferd.backends.torchserve import MANIFEST, extract_mar
from inferd.paths import UnsafePathError


def _tar(path: Path, members: list[tarfile.TarInfo], data: dict[str, bytes] | None = None) -> Path:
    with tarfile.open(path, "w") as tar:
        for info in members:
            payload = (data or {}).get(info.name)
            if payload is not None:
                info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload) if payload is not None else None)
    return path


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    return info


def _zip(path: Path, files: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
        for name, target in (links or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = 0o120777 << 16  # a symbolic link, as Info-ZIP stores one
            archive.writestr(info, target)
    return path


def _written(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")} if folder.exists() else set()


# ---- the floor it sits on ----


def _inferd_imports(module: object) -> set[str]:
    source = Path(getattr(module, "__file__", "")).read_text()
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.level:
            found.add("inferd." + (node.module or ""))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("inferd"):
            found.add(node.module or "")
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("inferd"))
    return found


def test_archives_sits_below_repository_and_backends() -> None:
    # Only the standard library and path safety: backends (TorchServe) can extract without importing a repository.
    assert _inferd_imports(inferd.archives) == {"inferd.paths"}
    assert _inferd_imports(inferd.paths) == set()


def _absolute_imports(module: Path, package: list[str]) -> set[str]:
    """Every module a file imports, relative imports made absolute (`from ..x import y` gives x and x.y)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            stem = ".".join([*base, *(node.module or "").split(".")]).strip(".")
            found.add(stem)
            found.update(f"{stem}.{alias.name}" for alias in node.names)
    return found


def test_no_backend_imports_the_repository_package() -> None:
    src = Path(inferd.archives.__file__).parent.parent
    for module in (src / "inferd" / "backends").rglob("*.py"):
        package = list(module.relative_to(src).parent.parts)
        imported = _absolute_imports(module, package)
        assert not {name for name in imported if name.startswith("inferd.repository")}, module


# ---- names ----


@pytest.mark.parametrize("name", ["repo.tar.gz", "REPO.TGZ", "r.tar", "r.tar.bz2", "r.tbz2", "r.tar.xz", "r.txz",
                                  "r.zip"])
def test_archive_names(name: str) -> None:
    assert is_archive_name(name)


@pytest.mark.parametrize("name", ["model.onnx", "repo.gz", "model.mar", "tar.gz.txt", "models"])
def test_not_archive_names(name: str) -> None:
    assert not is_archive_name(name)
    assert not name.lower().endswith(ARCHIVE_SUFFIXES)


# ---- what extraction refuses ----


@pytest.mark.parametrize("name", ["../evil", "m/../../evil", "m/..", "..\\evil"])
def test_tar_refuses_parent_references(tmp_path: Path, name: str) -> None:
    archive = _tar(tmp_path / "a.tar", [_member("m/ok"), _member(name)], {"m/ok": b"ok", name: b"x"})
    with pytest.raises(UnsafePathError, match=r"\.\."):
        extract_archive(archive, tmp_path / "out")
    assert _written(tmp_path / "out") == set()  # every member is checked before the first is written
    assert not (tmp_path / "evil").exists()


@pytest.mark.parametrize("name", ["/tmp/inferd-evil", "//server/share/evil", "\\evil"])
def test_tar_refuses_absolute_paths(tmp_path: Path, name: str) -> None:
    archive = _tar(tmp_path / "a.tar", [_member(name)], {name: b"x"})
    with pytest.raises(UnsafePathError, match="absolute"):
        extract_archive(archive, tmp_path / "out")
    assert _written(tmp_path / "out") == set()


@pytest.mark.parametrize(("name", "kind", "target", "message"), [
    ("m/link", tarfile.SYMTYPE, "../../outside", "outside"),
    ("link", tarfile.SYMTYPE, "..", "outside"),  # the folder holding `dest`
    ("m/link", tarfile.SYMTYPE, "/etc", "absolute"),
    ("m/link", tarfile.SYMTYPE, "C:\\Windows", "absolute"),
    ("m/link", tarfile.LNKTYPE, "../outside", "outside"),  # a hard link's target is relative to `dest`
    ("m/link", tarfile.LNKTYPE, "/etc/passwd", "absolute"),
])
def test_tar_refuses_links_escaping_the_folder(tmp_path: Path, name: str, kind: bytes, target: str,
                                               message: str) -> None:
    archive = _tar(tmp_path / "a.tar", [_member(name, kind, target)])
    with pytest.raises(UnsafePathError, match=message):
        extract_archive(archive, tmp_path / "out")
    assert _written(tmp_path / "out") == set()


def test_tar_refuses_a_link_that_leaves_through_an_earlier_link(tmp_path: Path) -> None:
    # By their text both links stay inside ("m/up" is `out` itself, "m/up2" is "m"); once "m/up" is on disk,
    # "m/up2" resolves to the folder holding `out`: checked again as each member is written.
    archive = _tar(tmp_path / "a.tar", [_member("m/up", tarfile.SYMTYPE, ".."), _member("m/up2", tarfile.SYMTYPE,
                                                                                          "up/..")])
    with pytest.raises(UnsafePathError, match="outside"):
        extract_archive(archive, tmp_path / "out")


def test_tar_keeps_links_that_stay_inside(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "a.tar", [_member("m/1/model.onnx"), _member("m/2", tarfile.SYMTYPE, "1"),
                                        _member("m/3.onnx", tarfile.LNKTYPE, "m/1/model.onnx")],
                   {"m/1/model.onnx": b"onnx"})
    extract_archive(archive, tmp_path / "out")
    assert (tmp_path / "out/m/2").is_symlink()
    assert (tmp_path / "out/m/2/model.onnx").read_bytes() == b"onnx"
    assert (tmp_path / "out/m/3.onnx").read_bytes() == b"onnx"


@pytest.mark.parametrize("kind", [tarfile.FIFOTYPE, tarfile.CHRTYPE, tarfile.BLKTYPE])
def test_tar_refuses_devices_and_fifos(tmp_path: Path, kind: bytes) -> None:
    archive = _tar(tmp_path / "a.tar", [_member("m/dev", kind)])
    with pytest.raises(UnsafePathError, match="device files and FIFOs"):
        extract_archive(archive, tmp_path / "out")


@pytest.mark.parametrize(("files", "links", "message"), [
    ({"../evil": b"x"}, {}, r"\.\."),
    ({"m/../../evil": b"x"}, {}, r"\.\."),
    ({"/tmp/inferd-evil": b"x"}, {}, "absolute"),
    ({}, {"m/link": "/etc"}, "absolute"),
    ({}, {"m/link": "../../outside"}, "outside"),
])
def test_zip_refuses_what_would_leave_the_folder(tmp_path: Path, files: dict[str, bytes], links: dict[str, str],
                                                  message: str) -> None:
    archive = _zip(tmp_path / "a.zip", {"m/ok": b"ok", **files}, links)
    with pytest.raises(UnsafePathError, match=message):
        extract_archive(archive, tmp_path / "out")
    assert not (tmp_path / "evil").exists()
    assert not (tmp_path / "out/m/link").exists()


def test_zip_refuses_a_path_through_a_link_already_on_disk(tmp_path: Path) -> None:
    out, outside = tmp_path / "out", tmp_path / "outside"
    out.mkdir()
    outside.mkdir()
    (out / "m").symlink_to(outside)
    archive = _zip(tmp_path / "a.zip", {"m/evil": b"x"})
    with pytest.raises(UnsafePathError, match="outside"):
        extract_archive(archive, out)
    assert list(outside.iterdir()) == []


def test_neither_tar_nor_zip(tmp_path: Path) -> None:
    (tmp_path / "a.zip").write_bytes(b"plain text")
    with pytest.raises(ValueError, match="neither a tar nor a zip"):
        extract_archive(tmp_path / "a.zip", tmp_path / "out")


def test_tar_compressions_are_detected_by_content(tmp_path: Path) -> None:
    for mode, name in (("w:gz", "a.zip"), ("w:bz2", "b.tar"), ("w:xz", "c.tgz")):  # names that lie on purpose
        with tarfile.open(tmp_path / name, mode) as tar:
            info = tarfile.TarInfo("m/config.pbtxt")
            info.size = 2
            tar.addfile(info, io.BytesIO(b"ok"))
        extract_archive(tmp_path / name, tmp_path / f"out-{name}")
        assert (tmp_path / f"out-{name}/m/config.pbtxt").read_bytes() == b"ok"


# ---- the content-hash cache of TorchServe archives (backends/torchserve.extract_mar) ----


def _mar(path: Path, handler: bytes = b"def handle(data, context):\n    return data\n") -> Path:
    manifest = {"model": {"modelName": "m", "handler": "handler.py"}}
    return _zip(path, {MANIFEST: json.dumps(manifest).encode(), "handler.py": handler})


def test_mar_is_extracted_once_per_content(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    archive = _mar(tmp_path / "model.mar")
    first = extract_mar(archive, cache)
    assert (first / MANIFEST).is_file()
    marker = first / "extracted-once"
    marker.write_text("")
    copy = tmp_path / "b.mar"
    copy.write_bytes(archive.read_bytes())
    os.utime(copy, ns=(1, 1))
    assert extract_mar(copy, cache) == first  # the same bytes elsewhere, with another time: the same folder
    assert marker.exists()  # reused, not extracted again
    assert [p.name for p in cache.iterdir()] == [first.name]  # no staging folder left behind


def test_changed_mar_gets_a_folder_of_its_own(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = extract_mar(_mar(tmp_path / "model.mar"), cache)
    second = extract_mar(_mar(tmp_path / "model.mar", handler=b"# v2\n"), cache)
    assert second != first
    assert (second / "handler.py").read_bytes() == b"# v2\n"
    assert (first / "handler.py").exists()  # an instance still running the old archive keeps its files


def test_unsafe_mar_is_a_config_error_and_leaves_no_folder(tmp_path: Path) -> None:
    from inferd.config import ConfigError

    cache = tmp_path / "cache"
    archive = _zip(tmp_path / "model.mar", {MANIFEST: b"{}", "../evil.py": b"x"})
    with pytest.raises(ConfigError, match="refusing to extract"):
        extract_mar(archive, cache)
    assert not (tmp_path / "evil.py").exists()
    assert list(cache.iterdir()) == []


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX paths")
def test_extract_accepts_str_paths(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "a.zip", {"m/config.pbtxt": b"ok"})
    extract_archive(str(archive), str(tmp_path / "out"))
    assert (tmp_path / "out/m/config.pbtxt").read_bytes() == b"ok"
