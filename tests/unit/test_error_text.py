"""A model's exception as clients read it: no server paths, no environment values (issue 17, finding 10); the full
text in the server's log, one line per failure."""

from __future__ import annotations

import textwrap
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from clients import infer_tensors
from inferd.pipeline import as_infer_error
from inferd.scheduling import BackendFailure
from inferd.types import MASK, public_error_text
from serving import start_server


@pytest.mark.parametrize(("text", "expected"), [
    ("FileNotFoundError: [Errno 2] No such file or directory: '/srv/models/m/1/weights.bin'",
     "FileNotFoundError: [Errno 2] No such file or directory: 'weights.bin'"),
    ("open /srv/models/m/1/ failed", "open 1 failed"),
    ('File "/usr/lib/python3/site.py", line 3', 'File "site.py", line 3'),
    ("see file:///opt/app/conf.yaml and ~/secret/key.pem", "see conf.yaml and key.pem"),
    ("relative a/b/c and x // y and 6 / 3 stay", "relative a/b/c and x // y and 6 / 3 stay"),
    ("shape (2,3) does not match [4]", "shape (2,3) does not match [4]"),
    ("multi\n  line\ttext", "multi line text"),
])
def test_paths_are_reduced_to_their_last_component(text: str, expected: str) -> None:
    assert public_error_text(text, {}) == expected


def test_environment_values_are_masked() -> None:
    environ = {"API_TOKEN": "sk-live-0123456789", "SHORT": "abcdef", "HOME": "/home/someone", "EMPTY": ""}
    text = "auth sk-live-0123456789 refused for abcdef at /home/someone/models/m.py"
    assert public_error_text(text, environ) == f"auth {MASK} refused for abcdef at m.py"


def test_the_environment_at_start_is_used_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    secret = next((v for v in os.environ.values() if len(v) >= 7 and not v.startswith(("/", "~/"))), None)
    if secret is None:
        pytest.skip("no environment value of 7 characters or more")
    assert secret not in public_error_text(f"failed with {secret}")


class _Model:
    name = "m"


class _Call:
    model = _Model()
    request = None


def test_as_infer_error_cleans_backend_failures_and_other_exceptions() -> None:
    failure = BackendFailure("FileNotFoundError: [Errno 2] No such file or directory: '/data/secret/w.bin'")
    error = as_infer_error(_Call(), failure)  # type: ignore[arg-type]
    assert error.message == "model 'm' failed: FileNotFoundError: [Errno 2] No such file or directory: 'w.bin'"
    other = as_infer_error(_Call(), OSError("cannot read /etc/inferd/x.conf"))  # type: ignore[arg-type]
    assert other.message == "model 'm' failed: OSError: cannot read x.conf"


# ---- end to end: a Python model raising on an absolute path ----

LEAKY_PY = """
    import os

    import numpy as np


    class Model:
        inputs = [{"name": "x", "datatype": "FP32", "shape": [-1]}]
        outputs = [{"name": "y", "datatype": "FP32", "shape": [-1]}]

        def predict(self, inputs):
            raise FileNotFoundError(f"{os.environ['LEAKY_DIR']}/weights.bin (key {os.environ['LEAKY_KEY']})")
"""
SECRET = "s3cr3t-value-42"


@pytest.mark.timeout(120)
def test_a_python_models_exception_reaches_clients_without_paths_or_secrets(tmp_path: Path) -> None:
    hidden = tmp_path / "private-folder" / "weights"
    repo = tmp_path / "models"
    (repo / "leaky" / "1").mkdir(parents=True)
    (repo / "leaky" / "1" / "model.py").write_text(textwrap.dedent(LEAKY_PY))
    server = start_server(repo, tmp_path / "inferd.log", env={"LEAKY_DIR": str(hidden), "LEAKY_KEY": SECRET})
    try:
        deadline = time.monotonic() + 60
        while httpx.get(f"{server.base_url}/v2/models/leaky/ready", timeout=30).status_code != 200:
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.1)
        answer = httpx.post(f"{server.base_url}/v2/models/leaky/infer", timeout=60,
                            json={"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}]})
        assert answer.status_code == 500, answer.text
        http_message = answer.json()["error"]
        with pytest.raises(InferenceServerException) as caught:
            infer_tensors("grpc", server, "leaky", {"x": (np.array([1.0], dtype=np.float32), "FP32")}, ["y"])
        grpc_message = caught.value.message()
        for message in (http_message, grpc_message):
            assert f"model 'leaky' failed: FileNotFoundError: weights.bin (key {MASK})" in message, message
            assert str(tmp_path) not in message and "private-folder" not in message and SECRET not in message
        log = server.log()
        # The full text is in the log, once per failure, on one line.
        full = f"{hidden}/weights.bin (key {SECRET})"
        assert log.count(full) >= 2, log
        assert all(line.count(full) == 1 for line in log.splitlines() if full in line)
    finally:
        server.stop()
