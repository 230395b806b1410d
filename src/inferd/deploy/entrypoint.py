"""`inferd entrypoint`: the container image's entrypoint, which turns KServe's and Knative's conventions into an
`inferd serve` command line.

- KServe's storage initializer copies `storageUri` into `/mnt/models`: that folder is either a repository (one
  folder per model) or one model's folder (its `config.pbtxt`, version folders, or a model file put there directly:
  `model.onnx`, `MLmodel`, `saved_model.pb`). One model is served under its InferenceService's name (the runtime passes
  `--model-name={{.Name}}`) through a repository folder holding a link to it. TorchServe's layout
  (`/mnt/models/model-store/*.mar`) is a repository of archives.
- `STORAGE_URI` (set by KServe, or by hand): when `/mnt/models` is absent or empty, inferd fetches the URI itself.
- `PORT` (Knative's contract: the one port the platform routes) is where `PROTOCOL` is served: HTTP for `v1` and
  `v2` (both protocols share the HTTP port), gRPC for `grpc-v2`.
- Flags after the entrypoint's own go to `inferd serve` as they are and win over what the environment says.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

KSERVE_MODEL_DIR = "/mnt/models"  # where KServe's storage initializer puts what storageUri names
DEFAULT_HTTP_PORT = 8000
DEFAULT_GRPC_PORT = 8001
PROTOCOLS = ("v1", "v2", "grpc-v2")  # KServe's protocolVersion values
_SINGLE_MODEL_FILES = ("config.pbtxt", "MLmodel", "saved_model.pb", "saved_model.pbtxt")
_SERVE = "import sys; from inferd.cli import main; sys.exit(main(sys.argv[1:]))"  # `inferd ARGS` in this Python
_TORCHSERVE_STORE = "model-store"  # KServe's TorchServe layout: model-store/*.mar beside config/


@dataclass(frozen=True)
class ServePlan:
    """What the entrypoint decided: the `inferd serve` arguments, and the links to make first when one model's
    folder is served as a repository (each `(link, target)`)."""

    args: list[str]
    links: list[tuple[Path, Path]] = field(default_factory=list)


def _entries(folder: Path) -> list[Path]:
    try:
        return [e for e in folder.iterdir() if not e.name.startswith(".")]
    except OSError:
        return []


def folder_layout(folder: Path) -> str:
    """'model' when `folder` is one model's folder, 'repository' when it holds model folders or .mar archives,
    'empty' when there is nothing in it (or it is missing)."""
    entries = _entries(folder)
    if not entries:
        return "empty"
    names = {e.name for e in entries}
    if names & set(_SINGLE_MODEL_FILES) or any(e.is_dir() and e.name.isdigit() for e in entries):
        return "model"
    if any(e.is_file() and not e.name.endswith(".mar") for e in entries):
        return "model"  # a model file put there directly (model.onnx, model.joblib, model.pt)
    return "repository"


def _given(args: Sequence[str], flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in args)


def _ports(env: Mapping[str, str], serve_args: Sequence[str]) -> list[str]:
    protocol = env.get("PROTOCOL", "").strip() or "v2"
    if protocol not in PROTOCOLS:
        raise ValueError(f"PROTOCOL={protocol!r}: expected one of {', '.join(PROTOCOLS)}")
    port = env.get("PORT", "").strip()
    if not port:
        return []
    if not port.isdigit():
        raise ValueError(f"PORT={port!r} is not a port number")
    grpc = protocol == "grpc-v2"
    flag, other_flag = ("--grpc-port", "--http-port") if grpc else ("--http-port", "--grpc-port")
    args = [] if _given(serve_args, flag) else [f"{flag}={port}"]
    if int(port) == (DEFAULT_HTTP_PORT if grpc else DEFAULT_GRPC_PORT) and not _given(serve_args, other_flag):
        args.append(f"{other_flag}={DEFAULT_GRPC_PORT if grpc else DEFAULT_HTTP_PORT}")  # swap: no clash
    return args


def plan_serve(model_dir: Path, env: Mapping[str, str], serve_args: Sequence[str], model_name: str | None = None,
               link_dir: Path | None = None) -> ServePlan:
    """The `inferd serve` command line for a container started by KServe, Knative or plain Kubernetes.

    `link_dir` is where a repository folder for a single model is made (a fresh temporary folder when None).
    """
    args = [*_ports(env, serve_args)]
    if _given(serve_args, "--model-repository") or _given(serve_args, "--model-store"):
        return ServePlan([*args, *serve_args])
    layout = folder_layout(model_dir)
    if layout == "empty":
        uri = env.get("STORAGE_URI", "").strip()
        if not uri:
            raise ValueError(f"{model_dir} is empty or missing and STORAGE_URI is not set: no model repository "
                             "to serve (or pass --model-repository)")
        return ServePlan([*args, f"--model-repository={uri}", *serve_args])
    if layout == "repository":
        store = model_dir / _TORCHSERVE_STORE
        repository = store if store.is_dir() and folder_layout(store) == "repository" else model_dir
        return ServePlan([*args, f"--model-repository={repository}", *serve_args])
    name = model_name or env.get("MODEL_NAME", "").strip() or _name_from_uri(env.get("STORAGE_URI", "")) or "model"
    root = link_dir if link_dir is not None else Path(tempfile.mkdtemp(prefix="inferd-repository-"))
    return ServePlan([*args, f"--model-repository={root}", *serve_args], _model_links(model_dir, root / name))


def _model_links(model_dir: Path, folder: Path) -> list[tuple[Path, Path]]:
    """Links that make `folder` a model folder of `model_dir`'s content: the folder itself when it has version
    folders, else its files as version 1 (a SavedModel's as 1/model.savedmodel, the name Triton gives it)."""
    entries = _entries(model_dir)
    if any(e.is_dir() and e.name.isdigit() for e in entries):
        return [(folder, model_dir)]
    links = [(folder / "config.pbtxt", model_dir / "config.pbtxt")] if (model_dir / "config.pbtxt").is_file() else []
    if (model_dir / "saved_model.pb").is_file() or (model_dir / "saved_model.pbtxt").is_file():
        return [*links, (folder / "1" / "model.savedmodel", model_dir)]
    return [*links, (folder / "1", model_dir)]


def _name_from_uri(uri: str) -> str:
    """The last path segment of a storage URI, when it names a folder (s3://bucket/models/resnet -> resnet)."""
    tail = uri.strip().rstrip("/").rsplit("/", 1)[-1] if "://" in uri else ""
    return tail if tail and "." not in tail and tail.replace("-", "").replace("_", "").isalnum() else ""


def run_entrypoint(model_dir: Path, model_name: str | None, serve_args: Sequence[str]) -> int:
    """Plan, make the link when needed, then become `inferd serve` (exec: signals reach the server directly)."""
    try:
        plan = plan_serve(model_dir, os.environ, serve_args, model_name)
    except ValueError as error:
        print(f"inferd entrypoint: {error}", file=sys.stderr)
        return 2
    for link, target in plan.links:
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(target, target_is_directory=target.is_dir())
    print(f"inferd entrypoint: inferd serve {' '.join(plan.args)}", file=sys.stderr, flush=True)
    os.execv(sys.executable, [sys.executable, "-c", _SERVE, "serve", *plan.args])
