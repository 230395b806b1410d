"""TF Serving's user, first hour: a config-less SavedModel (auto-complete gives it Triton's max_batch_size 4) and a
client that posts 6 instances to `:predict`, as TF Serving answers any number. A real `inferd serve`; the SavedModel
is saved by this test with tf.saved_model.save."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from serving import ServerProcess, start_server

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
tf = pytest.importorskip("tensorflow")

MODEL = "tf_affine"
_Module: Any = tf.Module  # a base class mypy cannot see through importorskip


class Affine(_Module):
    """y = 2 x + 1 on rows of 3 floats: a variable first dimension, so auto-complete batches it."""

    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x")])
    def serve(self, x: Any) -> dict[str, Any]:
        return {"y": x * 2.0 + 1.0}


@pytest.fixture(scope="module")
def tf_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("tfserving")
    module = Affine()
    target = root / "models" / MODEL / "1" / "model.savedmodel"
    target.parent.mkdir(parents=True)
    tf.saved_model.save(module, str(target), signatures={"serving_default": module.serve})
    process = start_server(root / "models", root / "inferd.log")
    yield process
    process.stop()


def test_six_instances_to_a_config_less_saved_model(tf_server: ServerProcess) -> None:
    with httpx.Client(base_url=tf_server.base_url, timeout=60) as http:
        assert http.get(f"/v2/models/{MODEL}/config").json()["max_batch_size"] == 4
        instances = [[float(i), i + 0.5, -float(i)] for i in range(6)]
        reply = http.post(f"/v1/models/{MODEL}:predict", json={"instances": instances})
        assert reply.status_code == 200, reply.text
        assert reply.json()["predictions"] == [[2 * v + 1 for v in row] for row in instances]
        # And the server goes on serving the usual sizes.
        small = http.post(f"/v1/models/{MODEL}:predict", json={"instances": instances[:2]})
        assert small.json()["predictions"] == [[2 * v + 1 for v in row] for row in instances[:2]]
