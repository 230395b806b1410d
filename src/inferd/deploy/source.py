"""Where a deployed server finds its repository: a URI it fetches (or KServe's storage initializer fetches), a
PersistentVolumeClaim (`pvc://claim/path`, mounted as KServe mounts it), or a small local folder shipped as a
ConfigMap mounted at `/mnt/models`."""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..repository.uris import PVC_MOUNT_PATH, is_remote, uri_scheme
from .entrypoint import KSERVE_MODEL_DIR

# A ConfigMap is one etcd object (1 MiB at most, base64 included): a repository larger than this belongs in a bucket.
CONFIG_MAP_MAX_BYTES = 700 * 1024
Manifest = dict[str, Any]


@dataclass(frozen=True)
class RepositorySource:
    """The repository as the pod sees it: `uri` for `STORAGE_URI` / KServe's `storageUri`, or a ConfigMap (and its
    volume) mounted at /mnt/models, or a claim mounted at /mnt/pvc."""

    uri: str | None = None
    config_map: Manifest | None = None
    volumes: list[Manifest] = field(default_factory=list)
    mounts: list[Manifest] = field(default_factory=list)


def dns_label(text: str, fallback: str = "inferd") -> str:
    """`text` as a Kubernetes name (RFC 1035 label: lower case letters, digits and '-', a letter first, 63 at most)."""
    label = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    label = re.sub(r"^[^a-z]+", "", label)[:63].rstrip("-")
    return label or fallback


def repository_source(repository: str, name: str) -> RepositorySource:
    """The source for `--repository`: a URI stays a URI (a pvc:// claim is mounted too); a folder becomes a
    ConfigMap named `<name>-repository`."""
    if is_remote(repository):
        if uri_scheme(repository) == "file":
            raise ValueError(f"{repository}: a file:// URI names a folder of this machine, not of the cluster; pass "
                             "the folder itself (shipped as a ConfigMap) or a URI the cluster can reach (s3://, "
                             "gs://, az://, https://, pvc://)")
        if uri_scheme(repository) == "pvc":
            claim = repository.split("://", 1)[1].split("/", 1)[0]
            volume = {"name": "repository", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
            mount = {"name": "repository", "mountPath": PVC_MOUNT_PATH, "readOnly": True}
            return RepositorySource(uri=repository, volumes=[volume], mounts=[mount])
        return RepositorySource(uri=repository)
    folder = Path(repository)
    if not folder.is_dir():
        raise ValueError(f"{repository} is neither a folder nor a URI (s3://, gs://, az://, https://, pvc://)")
    config_map, items = repository_config_map(folder, f"{name}-repository")
    volume = {"name": "repository", "configMap": {"name": config_map["metadata"]["name"], "items": items}}
    mount = {"name": "repository", "mountPath": KSERVE_MODEL_DIR, "readOnly": True}
    return RepositorySource(config_map=config_map, volumes=[volume], mounts=[mount])


def repository_config_map(folder: Path, name: str) -> tuple[Manifest, list[Manifest]]:
    """A ConfigMap holding every file of `folder` (text as `data`, the rest as `binaryData`), and the volume items
    that put each file back at its path (ConfigMap keys cannot hold '/')."""
    files = sorted(p for p in folder.rglob("*") if p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    if not files:
        raise ValueError(f"{folder} holds no files")
    total = sum(p.stat().st_size for p in files)
    if total > CONFIG_MAP_MAX_BYTES:
        raise ValueError(f"{folder} holds {total} bytes, more than a ConfigMap carries ({CONFIG_MAP_MAX_BYTES}); "
                         "upload it (s3://, gs://, az://, a pvc:// claim) and pass that URI as --repository")
    data: dict[str, str] = {}
    binary: dict[str, str] = {}
    items: list[Manifest] = []
    for index, path in enumerate(files):
        relative = path.relative_to(folder).as_posix()
        key = f"f{index}-" + re.sub(r"[^-._a-zA-Z0-9]+", "_", path.name)
        content = path.read_bytes()
        try:
            data[key] = content.decode("utf-8")
        except UnicodeDecodeError:
            binary[key] = base64.b64encode(content).decode("ascii")
        items.append({"key": key, "path": relative})
    config_map: Manifest = {"apiVersion": "v1", "kind": "ConfigMap",
                            "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "inferd"}}}
    if data:
        config_map["data"] = data
    if binary:
        config_map["binaryData"] = binary
    return config_map, items
