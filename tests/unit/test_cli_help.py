"""`inferd serve --help`: every flag a user can give has a help line that states its default."""

from __future__ import annotations

import argparse

from inferd.cli import build_parser


def _serve_parser() -> argparse.ArgumentParser:
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return commands.choices["serve"]


def test_every_serve_flag_has_a_help_line_with_its_default() -> None:
    shown = [a for a in _serve_parser()._actions if a.help != argparse.SUPPRESS and a.dest != "help"]
    assert len(shown) > 50
    missing = [a.option_strings[0] for a in shown if not a.help or "default" not in a.help]
    assert missing == []


def test_help_shows_the_three_ports() -> None:
    text = " ".join(_serve_parser().format_help().split())
    for flag, port in (("--http-port", 8000), ("--grpc-port", 8001), ("--metrics-port", 8002)):
        assert flag in text and f"default {port}" in text
