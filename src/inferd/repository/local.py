"""Local model repositories laid out as Triton's: `<repo>/<model>/config.pbtxt` and `<repo>/<model>/<N>/`."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import ModelConfig
from .mar import MAR_SUFFIX, is_bare_mar, mar_model_folder

if TYPE_CHECKING:
    from .remote import RemoteRepository


def version_dirs(model_dir: Path) -> dict[int, Path]:
    """Numbered version folders of a model (folders whose name is not a non-negative integer are ignored)."""
    found: dict[int, Path] = {}
    try:
        entries = list(model_dir.iterdir())
    except OSError:
        return found
    for entry in entries:
        if entry.is_dir() and entry.name.isdigit():
            found[int(entry.name)] = entry
    return found


def loose_entries(model_dir: Path) -> list[str]:
    """What a model folder holds besides its config and its numbered version folders (sorted names; hidden ones
    left out): a model file put there directly, when no version folder holds it."""
    try:
        entries = list(model_dir.iterdir())
    except OSError:
        return []
    return sorted(e.name for e in entries if e.name != "config.pbtxt" and not e.name.startswith(".")
                  and not (e.is_dir() and e.name.isdigit()))


def select_versions(config: ModelConfig, available: list[int]) -> list[int]:
    """The versions the config's `version_policy` asks to serve (Triton's default: the latest one)."""
    policy = config.version_policy
    choice = policy.WhichOneof("policy_choice")
    ordered = sorted(available)
    if choice == "all":
        return ordered
    if choice == "specific":
        return sorted(v for v in set(policy.specific.versions) if v in available)
    count = policy.latest.num_versions if choice == "latest" else 1
    return ordered[-count:] if ordered else []


# A repository's folder of deployment files (SeldonDeployments, KServe InferenceGraphs: graph/deployments.py), not
# a model.
DEPLOYMENTS_FOLDER = "deployments"
DEPLOYMENT_SUFFIXES = (".yaml", ".yml", ".json")


def deployment_files(repositories: Iterable[Path], given: Iterable[str | Path] = ()) -> list[Path]:
    """The files to read: each repository's deployments/ folder (name order), then the files given."""
    found: list[Path] = []
    for root in repositories:
        folder = Path(root) / DEPLOYMENTS_FOLDER
        if folder.is_dir():
            found.extend(sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in DEPLOYMENT_SUFFIXES
                                and not p.name.startswith(".")))
    found.extend(Path(p) for p in given)
    return found


class ModelRepository:
    """One or more repository folders; a model name must be unique across them.

    A remote repository (`s3://`, `gs://`, `az://`, `https://` archive, `file://`, `pvc://`) is mirrored into a
    local cache by `RemoteRepository`; `refresh()` brings the mirrors up to date (at start and on every poll).
    """

    def __init__(self, paths: list[str | Path]) -> None:
        from .uris import is_remote

        self.remotes: dict[int, RemoteRepository] = {}
        for i, p in enumerate(paths):
            if isinstance(p, str) and is_remote(p):
                from .remote import RemoteRepository  # the mirrors' stores and archives: only for a remote one

                self.remotes[i] = RemoteRepository(p)
        self.paths = [Path(p) if i not in self.remotes else Path() for i, p in enumerate(paths)]
        self.refresh()

    def refresh(self) -> None:
        """Sync remote repositories into their local mirrors (cheap when nothing changed)."""
        for i, remote in self.remotes.items():
            self.paths[i] = remote.sync()

    def scan(self) -> tuple[dict[str, Path], dict[str, str]]:
        """Model folders by name, and names that cannot be served with the reason (duplicates, bad roots)."""
        models: dict[str, Path] = {}
        problems: dict[str, str] = {}
        sources: dict[str, Path] = {}  # where each model was found (its folder, or its bare .mar)
        for root in self.paths:
            if not root.is_dir():
                raise FileNotFoundError(f"model repository {root} is not a folder")
            for entry in sorted(root.iterdir()):
                name = entry.name
                if is_bare_mar(entry):  # TorchServe's model store: <name>.mar is model <name>, version 1
                    name = entry.name[: -len(MAR_SUFFIX)]
                elif not entry.is_dir() or entry.name.startswith(".") or entry.name == DEPLOYMENTS_FOLDER:
                    continue
                if name in models:
                    problems[name] = (f"model '{name}' appears in more than one repository or as both a folder "
                                      f"and a .mar ({sources[name]} and {entry})")
                    continue
                sources[name] = entry
                models[name] = mar_model_folder(entry) if entry.is_file() else entry
        return models, problems

    def find(self, name: str) -> Path | None:
        """The folder of one model (None if no repository holds it)."""
        if not name or "/" in name or "\\" in name or name in (".", "..", DEPLOYMENTS_FOLDER):
            return None
        for root in self.paths:
            candidate = root / name
            if candidate.is_dir():
                return candidate
            archive = root / f"{name}{MAR_SUFFIX}"
            if is_bare_mar(archive):
                return mar_model_folder(archive)
        return None
