"""`inferd serve` flags (Triton's names and boolean forms) and the start-up status table."""

from __future__ import annotations

import argparse

import pytest

from inferd.cli import build_parser, parse_bool, status_table


def _serve(*flags: str) -> argparse.Namespace:
    return build_parser().parse_args(["serve", "--model-repository", "/models", *flags])


def test_defaults() -> None:
    args = _serve()
    assert args.model_repository == ["/models"]
    assert args.strict_readiness is True
    assert args.allow_grpc is True
    assert args.allow_http is True
    assert args.exit_on_error is False
    assert args.disable_auto_complete_config is False
    assert (args.http_port, args.grpc_port, args.metrics_port) == (8000, 8001, 8002)


@pytest.mark.parametrize("flags, expected", [
    (["--strict-readiness=false"], False),
    (["--strict-readiness=False"], False),
    (["--strict-readiness", "false"], False),
    (["--strict-readiness=0"], False),
    (["--strict-readiness=true"], True),
    (["--strict-readiness"], True),
])
def test_strict_readiness_forms(flags: list[str], expected: bool) -> None:
    assert _serve(*flags).strict_readiness is expected


def test_allow_grpc_false_as_a_separate_word() -> None:
    assert _serve("--allow-grpc", "false").allow_grpc is False
    assert _serve("--allow-grpc", "true").allow_grpc is True


def test_bare_exit_on_error_means_true() -> None:
    assert _serve("--exit-on-error").exit_on_error is True
    assert _serve("--exit-on-error=false").exit_on_error is False


def test_a_bare_bool_flag_does_not_swallow_the_next_flag() -> None:
    args = _serve("--exit-on-error", "--http-port", "9000")
    assert args.exit_on_error is True
    assert args.http_port == 9000


def test_bad_bool_value_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        _serve("--strict-readiness=maybe")
    assert exc.value.code == 2
    assert "maybe" in capsys.readouterr().err


@pytest.mark.parametrize("text, value", [("true", True), ("TRUE", True), ("1", True), ("yes", True), ("on", True),
                                         ("false", False), ("False", False), ("0", False), ("no", False),
                                         ("off", False)])
def test_parse_bool(text: str, value: bool) -> None:
    assert parse_bool(text) is value


def test_repeatable_repository_and_triton_alias() -> None:
    args = build_parser().parse_args(["serve", "--model-repository", "/a", "--model-store", "/b"])
    assert args.model_repository == ["/a", "/b"]


def test_model_repository_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve"])
    assert "--model-repository" in capsys.readouterr().err


def test_ignored_triton_flags_are_accepted() -> None:
    # Flags Triton users pass that mean nothing here are accepted (and ignored with a warning at serve time).
    args = _serve("--model-load-thread-count=2", "--backend-directory", "/opt/tritonserver/backends",
                  "--pinned-memory-pool-byte-size=268435456")
    assert args.model_repository == ["/models"]


def test_disable_auto_complete_and_max_input_size() -> None:
    args = _serve("--disable-auto-complete-config", "--http-max-input-size", "1024")
    assert args.disable_auto_complete_config is True
    assert args.http_max_input_size == 1024


def test_status_table() -> None:
    table = status_table([
        {"name": "simple", "version": "1", "state": "READY", "reason": ""},
        {"name": "broken", "state": "UNAVAILABLE", "reason": "failed to parse config.pbtxt"},
    ])
    lines = table.splitlines()
    assert lines[0] == lines[2] == lines[-1]
    assert set(lines[0]) == {"+", "-"}
    assert [c.strip() for c in lines[1].strip("|").split("|")] == ["Model", "Version", "Status"]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[3:-1]]
    assert rows == [["simple", "1", "READY"], ["broken", "-", "UNAVAILABLE: failed to parse config.pbtxt"]]
    assert len({len(line) for line in lines}) == 1, "every line has the same width"


def test_status_table_without_models() -> None:
    lines = status_table([]).splitlines()
    assert len(lines) == 4
    assert "Model" in lines[1]
