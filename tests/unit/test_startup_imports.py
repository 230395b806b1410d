"""What a server imports at start: only what its models and doors need (issue 18's P5). Each check runs in a fresh
interpreter, since this test process has imported everything already."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

# Imported only where used: an audit trail (SQLAlchemy), deployment files (YAML, the Seldon and KServe graphs),
# tritonclient's client (its package __init__: ml_dtypes, rapidjson), the frameworks of backends no model uses,
# remote repositories, the other subcommands.
NOT_AT_START = ("sqlalchemy", "yaml", "ml_dtypes", "rapidjson", "tritonclient.utils",
                "onnxruntime", "torch", "tensorflow", "sklearn", "xgboost", "lightgbm", "mlflow", "pandas", "fsspec",
                "boto3", "psycopg", "opentelemetry", "starlette", "PIL", "aiohttp", "tarfile", "email.policy",
                "inferd.gateway.audit", "inferd.graph.deployments", "inferd.repository.remote", "inferd.deploy",
                "inferd.tools", "inferd.client", "inferd.repo_tools", "inferd.microservice")


def _modules_after(code: str) -> set[str]:
    done = subprocess.run([sys.executable, "-c", f"{code}\nimport sys, json; print(json.dumps(sorted(sys.modules)))"],
                          capture_output=True, text=True, check=True, timeout=120)
    return set(json.loads(done.stdout.splitlines()[-1]))


def test_serving_imports_only_what_it_uses(tmp_path: Path) -> None:
    """`inferd serve`'s command line, server (an empty repository) and both front doors' modules."""
    code = ("from inferd.cli import build_parser\n"
            f"args = build_parser(serve_only=True).parse_args(['serve', '--model-repository', {str(tmp_path)!r}])\n"
            f"from inferd.server import Server\nServer({str(tmp_path)!r}).close()\n"
            "import inferd.frontends.http, inferd.frontends.grpc, inferd.frontends.runner")
    loaded = _modules_after(code)
    assert sorted(m for m in loaded if any(m == p or m.startswith(f"{p}.") for p in NOT_AT_START)) == []
    # Triton's generated messages, without tritonclient's client (the package `tritonclient.grpc` itself)
    assert "tritonclient.grpc" not in loaded
    assert {"tritonclient.grpc.model_config_pb2", "tritonclient.grpc.service_pb2"} <= loaded


def test_triton_messages_are_tritonclients_own() -> None:
    """The generated modules loaded without tritonclient's client are the very ones its client uses afterwards."""
    code = ("import inferd.frontends.grpc\nfrom inferd import protos\nfrom inferd.config import ModelConfig\n"
            "import tritonclient.grpc as client\n"
            "assert client.model_config_pb2 is protos.model_config_pb2 and client.service_pb2 is protos.service_pb2\n"
            "assert client.model_config_pb2.ModelConfig is ModelConfig and client.InferenceServerClient\n"
            "assert client.service_pb2_grpc is protos.service_pb2_grpc")
    assert "tritonclient.utils" in _modules_after(code)


def test_protos_after_the_client() -> None:
    """With tritonclient's client imported first, the modules come from it."""
    code = ("import tritonclient.grpc as client\nfrom inferd import protos\n"
            "assert protos.service_pb2 is client.service_pb2 and protos.model_config_pb2 is client.model_config_pb2")
    _modules_after(code)
