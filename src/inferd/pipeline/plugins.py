"""Stages from outside the package: `--pipeline-stage MODULE:FACTORY` and the `inferd.stages` entry-point group.

A factory is called with the server and returns the stage; the server places it where the stage's `before` /
`after` attribute says (see `Server.add_stage`).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import threading
from typing import Any, Protocol

from ..types import describe_error
from .pipeline import Stage

log = logging.getLogger("inferd.pipeline")

__all__ = ["StagePlugins", "add_pipeline_stage_argument", "add_pipeline_stages", "stage_from_spec"]


class Server(Protocol):
    """What this module needs of the server (`inferd.Server`): a place for stages. Factories get the server."""

    def add_stage(self, stage: Stage) -> None: ...


def stage_from_spec(spec: str, server: Server) -> Stage:
    """The stage a `MODULE:FACTORY` names: FACTORY is called with the server."""
    module_name, colon, attribute = spec.partition(":")
    if not colon or not module_name or not attribute:
        raise ValueError(f"--pipeline-stage takes MODULE:FACTORY, got '{spec}'")
    factory = getattr(importlib.import_module(module_name), attribute, None)
    if not callable(factory):
        raise ValueError(f"--pipeline-stage {spec}: '{attribute}' is not a callable of module '{module_name}'")
    stage: Stage = factory(server)
    return stage


class StagePlugins:
    """The `inferd.stages` entry points, read on a thread from the moment the server is built: reading every
    installed package's metadata (and importing importlib.metadata) takes tens of milliseconds with many packages,
    which the server spends loading its models meanwhile rather than before."""

    def __init__(self) -> None:
        self._entries: list[Any] = []
        self._thread = threading.Thread(target=self._read, name="inferd-stage-plugins", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            from importlib.metadata import entry_points

            self._entries = list(entry_points(group="inferd.stages"))
        except Exception as exc:  # unreadable metadata: no plugin stages, said once
            log.error("cannot read the inferd.stages entry points: %s", describe_error(exc))

    def stages(self, server: Server) -> list[Stage]:
        """Each entry point's stage (its factory called with the server), once the reading is done."""
        self._thread.join()
        found = []
        for entry in self._entries:
            try:
                found.append(entry.load()(server))
            except Exception as exc:  # a broken plugin is reported and left out, never a server that cannot start
                log.error("pipeline stage plugin '%s' (%s) failed to load: %s", entry.name, entry.value,
                          describe_error(exc))
        return found


def add_pipeline_stage_argument(parser: argparse.ArgumentParser) -> None:
    """`--pipeline-stage`, for `inferd serve` and `inferd microservice` alike."""
    parser.add_argument("--pipeline-stage", action="append", default=[], metavar="MODULE:FACTORY",
                        help="add a stage to every request's pipeline: FACTORY(server) returns it; it runs where its "
                        "'before' / 'after' attribute (a stage name) says, by default before 'admit'")


def add_pipeline_stages(server: Server, specs: list[str]) -> bool:
    """Install `--pipeline-stage` stages; False (after logging why) when one cannot be."""
    for spec in specs:
        try:
            server.add_stage(stage_from_spec(spec, server))
        except Exception as exc:
            log.error("cannot add pipeline stage %s: %s", spec, describe_error(exc))
            return False
    return True
