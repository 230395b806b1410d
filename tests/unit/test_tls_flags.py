"""The TLS flags' rules (Triton's for gRPC): which combinations serve TLS, and the one-line errors of the others.
Loading real certificate files is covered over the wire in tests/integration/test_tls.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from inferd.frontends.tls import grpc_tls, http_tls


def test_no_flags_mean_plain() -> None:
    assert http_tls(None, None, None) is None
    assert grpc_tls(False, False, None, None, None) is None


@pytest.mark.parametrize(("certfile", "keyfile", "ca", "message"), [
    ("cert.pem", None, None, "--ssl-certfile needs --ssl-keyfile"),
    (None, "key.pem", None, "--ssl-keyfile needs --ssl-certfile"),
    (None, None, "ca.pem", "--ssl-ca-certs needs --ssl-certfile and --ssl-keyfile"),
    ("missing.pem", "missing.key", None, "--ssl-certfile missing.pem: no such file"),
])
def test_incomplete_http_flags(certfile: str | None, keyfile: str | None, ca: str | None, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        http_tls(certfile, keyfile, ca)


@pytest.mark.parametrize(("use_ssl", "mutual", "root", "message"), [
    (True, False, None, "--grpc-use-ssl needs --grpc-server-cert and --grpc-server-key"),
    (False, True, "ca.pem", "--grpc-use-ssl-mutual needs --grpc-server-cert"),  # mutual implies use-ssl
])
def test_grpc_tls_needs_a_certificate_and_key(use_ssl: bool, mutual: bool, root: str | None, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        grpc_tls(use_ssl, mutual, None, None, root)


def test_grpc_mutual_needs_a_root_certificate(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("x")
    key.write_text("x")
    with pytest.raises(ValueError, match="--grpc-use-ssl-mutual needs --grpc-root-cert"):
        grpc_tls(False, True, str(cert), str(key), None)
    with pytest.raises(ValueError, match="cannot load the certificate"):  # not PEM
        grpc_tls(True, False, str(cert), str(key), None)


def test_grpc_files_without_use_ssl_are_plain_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    assert grpc_tls(False, False, "cert.pem", "key.pem", None) is None
    assert "--grpc-server-cert, --grpc-server-key given without --grpc-use-ssl" in caplog.text
