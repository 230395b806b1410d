"""TLS for the HTTP and gRPC front doors: the files a door serves with, checked once at start-up.

Both doors take the same three PEM files (certificate chain, private key and, for mutual TLS, the CA certificates
client certificates must chain to). They are loaded into an `ssl.SSLContext` before any model loads, so a missing
file, a key that does not match its certificate or a file that is not PEM stops `inferd serve` with one line
naming the flag, instead of a traceback once the port is bound. The metrics endpoint stays plain HTTP, as in Triton.
"""

from __future__ import annotations

import logging
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("inferd")

__all__ = ["TlsSettings", "grpc_tls", "http_tls"]


@dataclass(frozen=True)
class TlsSettings:
    """The PEM files one front door serves TLS with.

    certfile: the server's certificate (chain); keyfile: its private key (unencrypted); ca_certs: when given,
    clients must present a certificate that chains to these CA certificates (mutual TLS), else the handshake fails.
    """

    certfile: Path
    keyfile: Path
    ca_certs: Path | None = None

    @property
    def mutual(self) -> bool:
        return self.ca_certs is not None

    def server_context(self, alpn: tuple[str, ...] = ()) -> ssl.SSLContext:
        """A server-side SSLContext with these files (TLS 1.2 or later; client certificates required and verified
        when `ca_certs` is set). Raises OSError (a file cannot be read) or ssl.SSLError (not PEM, mismatch)."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(certfile=self.certfile, keyfile=self.keyfile)
        if self.ca_certs is not None:
            context.load_verify_locations(cafile=self.ca_certs)
            context.verify_mode = ssl.CERT_REQUIRED
        if alpn:
            context.set_alpn_protocols(list(alpn))
        return context

    def pem(self) -> tuple[bytes, bytes, bytes | None]:
        """The files' bytes (certificate chain, key, CA certificates or None), as grpc.ssl_server_credentials
        takes them."""
        ca = self.ca_certs.read_bytes() if self.ca_certs is not None else None
        return self.certfile.read_bytes(), self.keyfile.read_bytes(), ca


def _readable(path: str, flag: str) -> Path:
    """`path` as a Path; ValueError naming `flag` when it is not a readable file."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ValueError(f"{flag} {path}: no such file")
    if not os.access(file, os.R_OK):
        raise ValueError(f"{flag} {path}: not readable by this process")
    return file


def _checked(settings: TlsSettings, flags: str) -> TlsSettings:
    """`settings` once its files load into an SSLContext; ValueError naming `flags` when they do not."""
    try:
        settings.server_context()
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"{flags}: cannot load the certificate, key or CA certificates ({exc})") from None
    return settings


def http_tls(certfile: str | None, keyfile: str | None, ca_certs: str | None) -> TlsSettings | None:
    """The HTTP door's TLS from `--ssl-certfile`, `--ssl-keyfile` and `--ssl-ca-certs` (None: plain HTTP).
    Raises ValueError with a one-line message when they are incomplete or do not load."""
    if not certfile and not keyfile:
        if ca_certs:
            raise ValueError("--ssl-ca-certs needs --ssl-certfile and --ssl-keyfile")
        return None
    if not certfile:
        raise ValueError("--ssl-keyfile needs --ssl-certfile (the server certificate)")
    if not keyfile:
        raise ValueError("--ssl-certfile needs --ssl-keyfile (the certificate's private key)")
    settings = TlsSettings(_readable(certfile, "--ssl-certfile"), _readable(keyfile, "--ssl-keyfile"),
                           _readable(ca_certs, "--ssl-ca-certs") if ca_certs else None)
    return _checked(settings, "--ssl-certfile/--ssl-keyfile/--ssl-ca-certs")


def grpc_tls(use_ssl: bool, use_ssl_mutual: bool, server_cert: str | None, server_key: str | None,
             root_cert: str | None) -> TlsSettings | None:
    """The gRPC door's TLS with Triton's semantics (None: plain text): `--grpc-use-ssl` serves TLS with
    `--grpc-server-cert` / `--grpc-server-key`; `--grpc-use-ssl-mutual` implies it and also requires client
    certificates signed by `--grpc-root-cert`. Raises ValueError with a one-line message when the files are
    missing or do not load."""
    if not (use_ssl or use_ssl_mutual):
        given = [flag for flag, value in (("--grpc-server-cert", server_cert), ("--grpc-server-key", server_key),
                                          ("--grpc-root-cert", root_cert)) if value]
        if given:
            log.warning("%s given without --grpc-use-ssl: gRPC serves plain text", ", ".join(given))
        return None
    flag = "--grpc-use-ssl-mutual" if use_ssl_mutual else "--grpc-use-ssl"
    if not server_cert or not server_key:
        raise ValueError(f"{flag} needs --grpc-server-cert and --grpc-server-key")
    if use_ssl_mutual and not root_cert:
        raise ValueError("--grpc-use-ssl-mutual needs --grpc-root-cert (the CA that signs client certificates)")
    if root_cert and not use_ssl_mutual:
        log.warning("--grpc-root-cert is used only with --grpc-use-ssl-mutual: client certificates are not asked for")
    settings = TlsSettings(_readable(server_cert, "--grpc-server-cert"), _readable(server_key, "--grpc-server-key"),
                           _readable(root_cert, "--grpc-root-cert") if use_ssl_mutual and root_cert else None)
    return _checked(settings, "--grpc-server-cert/--grpc-server-key/--grpc-root-cert")
