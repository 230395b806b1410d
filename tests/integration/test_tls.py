"""TLS on the HTTP and gRPC front doors, over the wire with tritonclient's own SSL options.

A test CA signs a server certificate for 127.0.0.1 / localhost and a client certificate; a second CA signs a
client certificate the server must refuse. Two real servers: one with TLS on both doors, one with mutual TLS on
both (`--ssl-ca-certs`, `--grpc-use-ssl-mutual`). In-process HttpServers check that the header and body timeouts,
the handshake bound and keep-alive still hold over TLS; bad flags stop `inferd serve` with one clear line.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import ssl
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import inferd
from clients import simple_data, simple_inputs
from inferd.frontends.http import HttpFrontend, HttpServer
from inferd.frontends.http.server import HttpLimits
from inferd.frontends.tls import TlsSettings
from models import SIMPLE, add_simple
from serving import HOST, INFERD, ServerProcess

READY = b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n"


@dataclass(frozen=True)
class Pki:
    """PEM files: the CA, the server's certificate and key, a client's, and a client's of another CA."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_cert: Path
    rogue_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _issue(subject: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
           *, ca: bool = False, server: bool = False) -> x509.Certificate:
    """A certificate for `key`, signed by `issuer` (None: self-signed)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    issuer_name, signer = issuer if issuer is not None else (_name(subject), key)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(issuer_name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
            key_encipherment=False, data_encipherment=False, key_agreement=False, encipher_only=False,
            decipher_only=False), critical=True)
    elif server:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(HOST))]), critical=False)
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    else:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    return builder.sign(signer, hashes.SHA256())


def _write(folder: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> tuple[Path, Path]:
    cert_path, key_path = folder / f"{name}.pem", folder / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca_key, rogue_ca_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = _issue("inferd test CA", ca_key, None, ca=True)
    ca_path, _ = _write(folder, "ca", ca, ca_key)
    issuer = (ca.subject, ca_key)
    server_key, client_key, rogue_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    server_cert, server_key_path = _write(folder, "server", _issue(HOST, server_key, issuer, server=True), server_key)
    client_cert, client_key_path = _write(folder, "client", _issue("client", client_key, issuer), client_key)
    rogue_issuer = (_name("rogue CA"), rogue_ca_key)
    rogue_cert, rogue_key_path = _write(folder, "rogue", _issue("rogue", rogue_key, rogue_issuer), rogue_key)
    return Pki(ca_path, server_cert, server_key_path, client_cert, client_key_path, rogue_cert, rogue_key_path)


def _start(root: Path, *args: str) -> ServerProcess:
    """`inferd serve` with `simple`, waited for by its log (its HTTP door may be HTTPS: no plain health probe)."""
    add_simple(root / "models")
    process = ServerProcess(root / "models", root / "inferd.log", *args)
    try:
        process.wait_started()
    except RuntimeError:
        process.stop()
        raise
    return process


@pytest.fixture(scope="module")
def tls_server(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = _start(tmp_path_factory.mktemp("tls"), f"--ssl-certfile={pki.server_cert}",
                     f"--ssl-keyfile={pki.server_key}", "--grpc-use-ssl=true",
                     f"--grpc-server-cert={pki.server_cert}", f"--grpc-server-key={pki.server_key}")
    yield process
    process.stop()


@pytest.fixture(scope="module")
def mutual_server(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = _start(tmp_path_factory.mktemp("mtls"), "--ssl-certfile", str(pki.server_cert), "--ssl-keyfile",
                     str(pki.server_key), "--ssl-ca-certs", str(pki.ca), "--grpc-use-ssl-mutual", "true",
                     "--grpc-server-cert", str(pki.server_cert), "--grpc-server-key", str(pki.server_key),
                     "--grpc-root-cert", str(pki.ca), "--allow-metrics=false")
    yield process
    process.stop()


def _http_infer(server: ServerProcess, **ssl_options: str) -> None:
    """One `simple` inference over HTTPS with tritonclient; asserts the answer."""
    client = httpclient.InferenceServerClient(server.http_url, ssl=True, ssl_options=ssl_options,
                                              ssl_context_factory=ssl.create_default_context)
    a, b = simple_data(2, seed=3)
    try:
        assert client.is_server_live()
        result = client.infer(SIMPLE, simple_inputs(httpclient, a, b))
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    finally:
        client.close()


def _grpc_infer(server: ServerProcess, **files: Path) -> None:
    """One `simple` inference over gRPC with TLS with tritonclient; asserts the answer."""
    client = grpcclient.InferenceServerClient(server.grpc_url, ssl=True, **{k: str(v) for k, v in files.items()})
    a, b = simple_data(2, seed=4)
    try:
        result = client.infer(SIMPLE, simple_inputs(grpcclient, a, b), client_timeout=30)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    finally:
        client.close()


def _grpc_refused(server: ServerProcess, **files: Path) -> None:
    """A gRPC call with these client files (none: plain text) ends UNAVAILABLE."""
    client = grpcclient.InferenceServerClient(server.grpc_url, ssl=bool(files),
                                              **{k: str(v) for k, v in files.items()})
    try:
        with pytest.raises(grpcclient.InferenceServerException) as error:
            client.is_server_live(client_timeout=10)
        assert error.value.status() == "StatusCode.UNAVAILABLE"
    finally:
        client.close()


def _https_client(pki: Pki, cert: Path | None = None, key: Path | None = None) -> httpx.Client:
    context = ssl.create_default_context(cafile=str(pki.ca))
    if cert is not None:
        context.load_cert_chain(cert, key)
    return httpx.Client(verify=context, timeout=10)


# ---- TLS ----

def test_https_inference(tls_server: ServerProcess, pki: Pki) -> None:
    _http_infer(tls_server, ca_certs=str(pki.ca))
    with _https_client(pki) as client:
        assert client.get(f"https://localhost:{tls_server.http_port}/v2/health/ready").status_code == 200


def test_https_port_refuses_plain_http_and_untrusted_clients(tls_server: ServerProcess) -> None:
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://{tls_server.http_url}/v2/health/live", timeout=10)
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):  # the system CAs do not know ours
        httpx.get(f"https://{tls_server.http_url}/v2/health/live", timeout=10)
    assert "HTTPService serves TLS only" in tls_server.log()


def test_grpc_tls_inference(tls_server: ServerProcess, pki: Pki) -> None:
    _grpc_infer(tls_server, root_certificates=pki.ca)
    _grpc_refused(tls_server)  # a plain-text client
    assert "GRPCInferenceService serves TLS only" in tls_server.log()


def test_metrics_stay_plain_http(tls_server: ServerProcess) -> None:
    response = httpx.get(f"http://{HOST}:{tls_server.metrics_port}/metrics", timeout=10)
    assert response.status_code == 200 and "nv_inference_count" in response.text


# ---- mutual TLS ----

def test_mutual_https_requires_a_client_certificate(mutual_server: ServerProcess, pki: Pki) -> None:
    _http_infer(mutual_server, ca_certs=str(pki.ca), certfile=str(pki.client_cert), keyfile=str(pki.client_key))
    url = f"https://{mutual_server.http_url}/v2/health/live"
    for cert, key in ((None, None), (pki.rogue_cert, pki.rogue_key)):
        with _https_client(pki, cert, key) as client, pytest.raises(httpx.HTTPError):
            client.get(url)
    with _https_client(pki, pki.client_cert, pki.client_key) as client:
        assert client.get(url).status_code == 200


def test_mutual_grpc_requires_a_client_certificate(mutual_server: ServerProcess, pki: Pki) -> None:
    _grpc_infer(mutual_server, root_certificates=pki.ca, private_key=pki.client_key,
                certificate_chain=pki.client_cert)
    _grpc_refused(mutual_server, root_certificates=pki.ca)
    _grpc_refused(mutual_server, root_certificates=pki.ca, private_key=pki.rogue_key,
                  certificate_chain=pki.rogue_cert)


def test_mutual_grpc_through_worker_processes(pki: Pki, tmp_path: Path) -> None:
    """With --workers 2 the workers serve the gRPC port with the same credentials (inference in their fast path,
    every other call forwarded to the main process)."""
    server = _start(tmp_path, "--workers", "2", "--grpc-use-ssl-mutual", "true", "--grpc-server-cert",
                    str(pki.server_cert), "--grpc-server-key", str(pki.server_key), "--grpc-root-cert", str(pki.ca),
                    "--allow-metrics=false")
    try:
        files = {"root_certificates": pki.ca, "private_key": pki.client_key, "certificate_chain": pki.client_cert}
        _grpc_infer(server, **files)
        client = grpcclient.InferenceServerClient(server.grpc_url, ssl=True, **{k: str(v) for k, v in files.items()})
        try:
            assert client.is_server_live(client_timeout=10)
        finally:
            client.close()
        _grpc_refused(server, root_certificates=pki.ca)
        _grpc_refused(server)
    finally:
        server.stop()


# ---- start-up errors ----

@pytest.mark.parametrize(("flags", "message"), [
    (["--ssl-certfile={server_cert}"], "--ssl-certfile needs --ssl-keyfile"),
    (["--ssl-keyfile={server_key}"], "--ssl-keyfile needs --ssl-certfile"),
    (["--ssl-certfile={server_cert}", "--ssl-keyfile={ca}"], "cannot load the certificate"),
    (["--grpc-use-ssl-mutual=true", "--grpc-server-cert={server_cert}", "--grpc-server-key={server_key}",
      "--grpc-root-cert={missing}"], "--grpc-root-cert {missing}: no such file"),
])
def test_bad_tls_flags_stop_the_server(pki: Pki, tmp_path: Path, flags: list[str], message: str) -> None:
    files = {"server_cert": pki.server_cert, "server_key": pki.server_key, "ca": pki.ca,
             "missing": tmp_path / "missing.pem"}
    done = subprocess.run([str(INFERD), "serve", "--model-repository", str(tmp_path), "--http-port=0",
                           "--grpc-port=0", "--metrics-port=0", *(f.format(**files) for f in flags)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stdout + done.stderr
    errors = [line for line in (done.stdout + done.stderr).splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and message.format(**files) in errors[0], done.stdout + done.stderr


# ---- the HTTP server's limits over TLS (in process) ----

@pytest.fixture(scope="module")
def sdk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[inferd.Server]:
    repo = tmp_path_factory.mktemp("tls-limits") / "models"
    repo.mkdir()
    with inferd.Server(model_repository=repo) as server:
        yield server


@contextlib.asynccontextmanager
async def https(sdk: inferd.Server, pki: Pki, **limits: float) -> AsyncIterator[HttpServer]:
    http = HttpServer(HttpFrontend(sdk), HOST, 0, limits=HttpLimits(**limits),
                      tls=TlsSettings(pki.server_cert, pki.server_key))
    await http.start()
    try:
        yield http
    finally:
        await http.stop(5)


async def _connect(http: HttpServer, pki: Pki) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(HOST, http.port, ssl=ssl.create_default_context(cafile=str(pki.ca)))


async def _status(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One response's status and headers (bodies here are short JSON read with them)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = int(next((line.split(b":")[1] for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), b"0"))
    await asyncio.wait_for(reader.readexactly(length), 5)
    return int(head.split()[1]), head


async def test_keep_alive_and_timeouts_over_tls(sdk: inferd.Server, pki: Pki) -> None:
    async with https(sdk, pki, header_timeout=0.4, body_timeout=0.4) as http:
        reader, writer = await _connect(http, pki)
        for _ in range(2):  # two requests on one connection
            writer.write(READY)
            assert (await _status(reader))[0] == 200
        writer.close()
        for partial in (b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n",
                        b"POST /v2/repository/index HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n{}"):
            reader, writer = await _connect(http, pki)
            writer.write(partial)
            status, head = await _status(reader)
            assert status == 408 and b"connection: close" in head.lower()
            assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()


async def test_a_client_that_never_handshakes_is_dropped(sdk: inferd.Server, pki: Pki) -> None:
    async with https(sdk, pki, header_timeout=0.4) as http:
        reader, writer = await asyncio.open_connection(HOST, http.port)  # TCP only: no ClientHello
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        reader, writer = await _connect(http, pki)
        writer.write(READY)
        assert (await _status(reader))[0] == 200
        writer.close()
