"""MkDocs hook: the CLI reference page is generated from the argument parsers in src/inferd/cli.py at build time.

A page holding the line `<!-- cli-reference -->` gets, in its place, one section per sub-command (and per
sub-sub-command, e.g. `inferd tenants add`) with that parser's own `format_help()` output, so the documented flags,
help lines and defaults are always the ones `inferd ... --help` prints.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

MARKER = "<!-- cli-reference -->"
WIDTH = "100"  # argparse wraps help to $COLUMNS; fixed so the page does not depend on the terminal that builds it


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.ArgumentParser]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return list(action.choices.items())
    return []


def _sections(parser: argparse.ArgumentParser, path: str, level: int) -> list[str]:
    out = [f"{'#' * level} `{path}`", "", "```text", parser.format_help().rstrip(), "```", ""]
    for name, sub in _subcommands(parser):
        out += _sections(sub, f"{path} {name}", min(level + 1, 4))
    return out


def render() -> str:
    """Every sub-command's help, as Markdown."""
    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = WIDTH
    try:
        from inferd.cli import build_parser

        parser = build_parser()
        parser.prog = "inferd"
        out: list[str] = []
        for name, sub in _subcommands(parser):
            out += _sections(sub, f"inferd {name}", 2)
        return "\n".join(out)
    finally:
        if previous is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = previous


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, render())
