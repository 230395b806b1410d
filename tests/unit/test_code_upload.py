"""`file:` overrides that would run code are refused unless the server allows code upload (issue 17, finding 1)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from inferd import Server
from inferd.config import config_from_json
from inferd.server import uploaded_code
from inferd.types import ErrorKind, InferError
from models import add_constant_model

PYTHON_MODEL = b"open('/tmp/inferd-code-upload-test-marker', 'w').write('ran')\n"


def _config(**fields: object) -> object:
    return config_from_json(json.dumps({"name": "m", **fields}))


@pytest.mark.parametrize(("config", "files", "why"), [
    # Code by the file's name, whatever the config says.
    (None, {"1/model.py": b""}, "'1/model.py' is code"),
    ({"backend": "onnxruntime"}, {"1/model.onnx": b"", "1/helper.py": b""}, "'1/helper.py' is code"),
    (None, {"1/model.joblib": b""}, "'1/model.joblib' is code"),
    (None, {"1/model.pkl": b""}, "'1/model.pkl' is code"),
    (None, {"1/weights.PICKLE": b""}, "is code"),
    (None, {"1/model.mar": b""}, "'1/model.mar' is code"),
    (None, {"1/MLmodel": b"", "1/data.bin": b""}, "'1/MLmodel' is code"),
    ({"backend": "onnxruntime"}, {"1/model.onnx": b"", "1/requirements.txt": b"x"}, "requirements.txt"),
    # Code by the backend that would load the files, whatever they are called.
    ({"backend": "python"}, {"1/model.txt": b""}, "backend 'python'"),
    ({"backend": "sklearn", "default_model_filename": "est.bin"}, {"1/est.bin": b""}, "backend 'sklearn'"),
    ({"backend": "mlflow"}, {"1/x.json": b""}, "backend 'mlflow'"),
    ({"backend": "torchserve"}, {"1/x.zip": b""}, "backend 'torchserve'"),
    ({"backend": "seldon"}, {"1/x": b""}, "backend 'seldon'"),
    # A config.pbtxt among the files names the backend when no config override does.
    (None, {"config.pbtxt": b'backend: "python"', "1/m.txt": b""}, "backend 'python'"),
])
def test_code_is_recognised(config: dict[str, object] | None, files: dict[str, bytes], why: str) -> None:
    parsed = _config(**config) if config is not None else None
    assert why in uploaded_code(parsed, files)  # type: ignore[arg-type]


@pytest.mark.parametrize(("config", "files"), [
    ({"backend": "onnxruntime"}, {"1/model.onnx": b""}),
    ({"platform": "onnxruntime_onnx"}, {"1/model.onnx": b""}),
    (None, {"1/model.onnx": b"", "config.pbtxt": b'platform: "onnxruntime_onnx"'}),
    (None, {"1/model.json": b""}),  # XGBoost's JSON: data
    (None, {"1/model.txt": b""}),  # LightGBM's text format: data
    (None, {"2/model.pt": b"", "labels.txt": b"a\nb"}),  # TorchScript, and a label file
    ({"backend": "tensorflow"}, {"1/model.savedmodel/saved_model.pb": b""}),
    # A config naming a data backend and a file name of its own: the data backend reads it.
    ({"default_model_filename": "weights.bin"}, {"1/weights.bin": b""}),
])
def test_data_is_not_code(config: dict[str, object] | None, files: dict[str, bytes]) -> None:
    parsed = _config(**config) if config is not None else None
    assert uploaded_code(parsed, files) == ""  # type: ignore[arg-type]


def test_sdk_refuses_uploaded_code_unless_allowed(tmp_path: Path) -> None:
    marker = Path("/tmp/inferd-code-upload-test-marker")
    marker.unlink(missing_ok=True)
    config = {"name": "evil", "backend": "python", "max_batch_size": 0,
              "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [1]}],
              "output": [{"name": "y", "data_type": "TYPE_FP32", "dims": [1]}]}
    with Server(tmp_path, model_control_mode="explicit") as server:
        assert server.allow_code_upload is False
        with pytest.raises(InferError) as exc:
            server.load("evil", json.dumps(config), {"1/model.py": PYTHON_MODEL})
        assert exc.value.kind is ErrorKind.PERMISSION_DENIED
        assert "--allow-code-upload" in exc.value.message and "'1/model.py'" in exc.value.message
        assert not marker.exists()
        assert server.repository_index() == []
        # Data is still welcome.
        adder = {"name": "adder", "backend": "onnxruntime", "max_batch_size": 8,
                 "input": [{"name": "INPUT0", "data_type": "TYPE_INT32", "dims": [-1]}],
                 "output": [{"name": "OUTPUT0", "data_type": "TYPE_INT32", "dims": [-1]}]}
        server.load("adder", adder, {"1/model.onnx": add_constant_model(3)})
        answer = server.infer("adder", {"INPUT0": np.array([[1, 2]], dtype=np.int32)})
        assert answer.outputs["OUTPUT0"].tolist() == [[4, 5]]
