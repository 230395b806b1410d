"""Start the real `inferd serve` as a subprocess on free ports of 127.0.0.1, and stop it by its PID."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

HOST = "127.0.0.1"
INFERD = Path(sys.executable).parent / "inferd"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0


def free_ports(count: int) -> list[int]:
    """Distinct free TCP ports of 127.0.0.1 (held together while picked, so they differ)."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((HOST, 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


class ServerProcess:
    """One `inferd serve` subprocess; its output goes to a log file so a failure can show it."""

    def __init__(self, repository: Path | Sequence[Path], log_path: Path, *extra_args: str,
                 env: dict[str, str] | None = None) -> None:
        repositories = [repository] if isinstance(repository, Path) else list(repository)
        self.http_port, self.grpc_port, self.metrics_port = free_ports(3)
        self.log_path = log_path
        self.args = [str(INFERD), "serve"]
        for repo in repositories:
            self.args += ["--model-repository", str(repo)]
        self.args += [
            "--http-port", str(self.http_port), "--grpc-port", str(self.grpc_port),
            "--http-address", HOST, "--grpc-address", HOST, "--metrics-port", str(self.metrics_port),
            *extra_args,
        ]
        self._log = open(log_path, "wb")  # closed in wait_exit()
        self.process = subprocess.Popen(self.args, stdout=self._log, stderr=subprocess.STDOUT,
                                        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})

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
        """Wait until /v2/health/live answers 200; raise with the server's log if it exits or never does."""
        deadline = time.monotonic() + timeout
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
