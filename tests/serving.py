"""Start the real `inferd serve` as a subprocess on 127.0.0.1, and stop it by its PID.

The server binds port 0 for HTTP, gRPC and metrics and logs the ports the system gave it (`started HTTPService at
127.0.0.1:PORT`, as Triton logs them); the ports are read from that log, so no two test servers can race for a port
picked beforehand.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

HOST = "127.0.0.1"
INFERD = Path(sys.executable).parent / "inferd"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0

# The lines `inferd serve` logs once a front door listens, and the one once all of them do.
# `inferd serve` logs "started HTTPService at ...", `inferd microservice` "started Seldon + V2 HTTPService at ...".
# (`"}` may end the line: a server started with --log-format json writes JSON lines.)
_STARTED = re.compile(r"started (?:Seldon \+ V2 )?(HTTPService|GRPCInferenceService|Metrics Service) at \S+:(\d+)"
                      r'"?}?\s*$', re.MULTILINE)
_READY = re.compile(r"inferd \S+ (?:microservice )?ready\b")
_SERVICES = {"HTTPService": "http", "GRPCInferenceService": "grpc", "Metrics Service": "metrics"}


def free_ports(count: int) -> list[int]:
    """Distinct free TCP ports of 127.0.0.1 (held together while picked, so they differ). Only for servers that
    cannot bind port 0 and say which port they got; another process may take a port before it is used."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((HOST, 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def _log_file_arg(args: Sequence[str]) -> Path | None:
    """The `--log-file` an argument list gives (the server then logs there instead of to its output)."""
    found: Path | None = None
    for i, arg in enumerate(args):
        if arg == "--log-file" and i + 1 < len(args):
            found = Path(args[i + 1])
        elif arg.startswith("--log-file="):
            found = Path(arg.split("=", 1)[1])
    return found if found is not None and str(found) else None


class ServerProcess:
    """One `inferd serve` subprocess; its output goes to a log file so a failure can show it.

    `http_port`, `grpc_port` and `metrics_port` are the ports the server reports it bound; reading one waits (up to
    START_TIMEOUT_S) until the server has started its front doors.
    """

    def __init__(self, repository: Path | Sequence[Path], log_path: Path, *extra_args: str,
                 env: dict[str, str] | None = None) -> None:
        repositories = [repository] if isinstance(repository, Path) else list(repository)
        args = [str(INFERD), "serve"]
        for repo in repositories:
            args += ["--model-repository", str(repo)]
        args += [
            "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0",
            "--http-address", HOST, "--grpc-address", HOST,
            *extra_args,
        ]
        self._start(args, log_path, {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}, None)

    def _start(self, args: list[str], log_path: Path, env: dict[str, str], cwd: Path | None) -> None:
        self.log_path = log_path
        self.args = args
        # Where the "started ... at" lines go: the server's own log file when one is given, else its output.
        self._report_path = _log_file_arg(args) or log_path
        self._ports: dict[str, int] | None = None
        self._log = open(log_path, "wb")  # closed in wait_exit()
        # A log file the server appends to may hold an earlier server's lines: only what this one writes counts.
        self._report_offset = self._report_path.stat().st_size if self._report_path.exists() else 0
        self.process = subprocess.Popen(self.args, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=cwd)

    @property
    def http_port(self) -> int:
        return self._port("http")

    @property
    def grpc_port(self) -> int:
        return self._port("grpc")

    @property
    def metrics_port(self) -> int:
        return self._port("metrics")

    def _port(self, service: str) -> int:
        ports = self.wait_started()
        if service not in ports:
            raise RuntimeError(f"inferd reported no {service} port (is that front door turned off?):\n{self.log()}")
        return ports[service]

    def _reported(self) -> str:
        if not self._log.closed:
            self._log.flush()
        try:
            with open(self._report_path, "rb") as handle:
                handle.seek(self._report_offset)
                return handle.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_started(self, timeout: float = START_TIMEOUT_S) -> dict[str, int]:
        """The ports the server listens on ("http", "grpc", "metrics"; those turned on), once it logged that it is
        ready; raise with the server's log if it exits first or never gets there."""
        if self._ports is not None:
            return self._ports
        deadline = time.monotonic() + timeout
        while True:
            text = self._reported()
            if _READY.search(text):
                self._ports = {_SERVICES[name]: int(port) for name, port in _STARTED.findall(text)}
                return self._ports
            if self.process.poll() is not None:
                raise RuntimeError(f"inferd exited with {self.process.returncode} before it started serving:\n"
                                   f"{self.log()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"inferd did not start serving within {timeout} s:\n{self.log()}")
            time.sleep(0.05)

    @property
    def http_url(self) -> str:
        return f"{HOST}:{self.http_port}"

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{HOST}:{self.grpc_port}"

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_live(self, timeout: float = START_TIMEOUT_S) -> None:
        """Wait until the server reported its ports and /v2/health/live answers 200; raise with the server's log if
        it exits or never does."""
        deadline = time.monotonic() + timeout
        try:
            self.wait_started(timeout)
        except RuntimeError:
            self.stop()
            raise
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"inferd exited with {self.process.returncode} before it was live:\n{self.log()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.base_url}/v2/health/live", timeout=2.0).status_code == 200:
                    return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"inferd was not live within {timeout} s:\n{self.log()}")

    def wait_exit(self, timeout: float = STOP_TIMEOUT_S) -> int:
        try:
            return self.process.wait(timeout=timeout)
        finally:
            self._log.close()

    def terminate(self) -> None:
        """SIGTERM to this server's PID (only the process this object started)."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL if it does not exit in time; returns its exit code."""
        self.terminate()
        try:
            return self.wait_exit()
        except subprocess.TimeoutExpired:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=STOP_TIMEOUT_S)
            return None
        finally:
            self._log.close()


def start_server(repository: Path | Sequence[Path], log_path: Path, *extra_args: str,
                 env: dict[str, str] | None = None) -> ServerProcess:
    """Start `inferd serve` (with `env` added to this process's environment) and wait until it is live."""
    server = ServerProcess(repository, log_path, *extra_args, env=env)
    server.wait_live()
    return server


class Microservice(ServerProcess):
    """One `inferd microservice` subprocess, run from the folder holding the user's module (as Seldon runs it).

    HTTP binds port 0 and reports it; gRPC and metrics get picked free ports (0 turns them off there)."""

    def __init__(self, folder: Path, log_path: Path, interface: str, *extra_args: str,
                 env: dict[str, str] | None = None) -> None:
        grpc_port, metrics_port = free_ports(2)
        args = [str(INFERD), "microservice", interface, "--http-port", "0", "--grpc-port", str(grpc_port),
                "--metrics-port", str(metrics_port), "--http-address", HOST, "--grpc-address", HOST, *extra_args]
        clean = {k: v for k, v in os.environ.items() if not k.startswith("PREDICTIVE_UNIT_")}
        self._start(args, log_path, {**clean, "PYTHONUNBUFFERED": "1", **(env or {})}, folder)

    def post(self, path: str, payload: Any) -> httpx.Response:
        return httpx.post(f"{self.base_url}{path}", json=payload, timeout=30)
