"""The `inferd repo` command line: `init`, `validate`, `show` (parsing and printing; the work is in the modules)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_repo_parser"]


def add_repo_parser(commands: Any) -> None:
    """Register `repo` on the `inferd` sub-commands; `args.func(args)` runs it."""
    repo = commands.add_parser("repo", help="create, validate and inspect a model repository without serving it",
                               description="Work on a model repository without serving it.")
    actions = repo.add_subparsers(dest="repo_command", required=True)
    init = actions.add_parser(
        "init", help="put a model file in a repository with its auto-completed config.pbtxt",
        description="Copy a model file (.onnx, .pt, .pt2, .joblib, .pkl, .json / .ubj (XGBoost), .txt (LightGBM), "
        ".py, .mar, or a SavedModel / MLflow folder) to REPO/NAME/1/ under the name its backend reads, and write "
        "the config auto-complete gives it to REPO/NAME/config.pbtxt. Exit status 0, or 2 when it cannot.")
    init.add_argument("model_path", type=Path, metavar="MODEL_PATH", help="the model file (or folder)")
    init.add_argument("--name", required=True, help="the model's name (its folder in the repository)")
    init.add_argument("--repository", type=Path, default=Path("."), metavar="DIR",
                      help="the model repository (default: the current folder)")
    init.set_defaults(func=_init)
    validate = actions.add_parser(
        "validate", help="list every problem of a repository, with file and line",
        description="Check every model of a repository as `inferd serve` would load it (config syntax, "
        "auto-complete, the config checks, version folders, model files, label files, canary / shadow and limit "
        "parameters, ensembles against their composing models), without serving. Prints FILE:LINE: PROBLEM lines; "
        "exit status 1 when there is any, else 0.")
    validate.add_argument("repository", type=Path, metavar="REPO")
    validate.set_defaults(func=_validate)
    show = actions.add_parser(
        "show", help="print a model's effective config (after auto-complete)",
        description="Print the config a model loads with: its config.pbtxt completed from the model file. "
        "Exit status 1 when the model would not load (the reason is printed).")
    show.add_argument("repository", type=Path, metavar="REPO")
    show.add_argument("model", metavar="MODEL")
    show.add_argument("--format", choices=["pbtxt", "json"], default="pbtxt",
                      help="pbtxt: config.pbtxt's text format; json: as GET /v2/models/MODEL/config answers "
                      "(default pbtxt)")
    show.set_defaults(func=_show)


def _quiet() -> None:
    """The tools print their own findings; the server's log lines about the same problems would repeat them."""
    logging.getLogger("inferd").setLevel(logging.CRITICAL)


def _init(args: argparse.Namespace) -> int:
    from .init import init_model

    _quiet()
    try:
        path = init_model(args.model_path, args.name, args.repository)
    except ValueError as exc:
        print(f"inferd repo init: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path.parent}/ (version 1 and {path.name}):")
    print(path.read_text(encoding="utf-8"), end="")
    return 0


def _validate(args: argparse.Namespace) -> int:
    from .validate import validate_repository

    _quiet()
    problems = validate_repository(args.repository)
    for problem in problems:
        print(problem)
    if problems:
        print(f"{len(problems)} problem{'s' if len(problems) != 1 else ''} found in {args.repository}",
              file=sys.stderr)
        return 1
    print(f"{args.repository}: no problems found")
    return 0


def _show(args: argparse.Namespace) -> int:
    from ..config import ConfigError
    from .show import effective_config, render_config

    _quiet()
    try:
        config = effective_config(args.repository, args.model)
    except ConfigError as exc:
        print(f"inferd repo show: {args.model}: {exc}", file=sys.stderr)
        return 1
    print(render_config(config, args.format).rstrip("\n"))
    return 0
