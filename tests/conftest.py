"""Session fixtures: the test model repository and one real `inferd serve` subprocess shared by most tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from models import build_main_repository
from serving import ServerProcess, start_server


@pytest.fixture(scope="session")
def model_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every test model, the broken ones included (see tests/models.py)."""
    return build_main_repository(tmp_path_factory.mktemp("repository") / "models")


@pytest.fixture(scope="session")
def server(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """`inferd serve` over the main repository; not strictly ready since some models are broken on purpose."""
    log_path = tmp_path_factory.mktemp("logs") / "inferd-main.log"
    process = start_server(model_repository, log_path, "--strict-readiness=false")
    yield process
    process.stop()


@pytest.fixture
def server_log(tmp_path: Path) -> Path:
    """A log file for a test that starts its own server."""
    return tmp_path / "inferd.log"
