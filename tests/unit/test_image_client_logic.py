"""The image client's model check and output lines (image_client.py's rules), without a server."""

from __future__ import annotations

import numpy as np
import pytest

from inferd.client.image import class_lines, parse_model

METADATA = {"name": "resnet", "inputs": [{"name": "in", "datatype": "FP32", "shape": [-1, 3, 224, 200]}],
            "outputs": [{"name": "out", "datatype": "FP32", "shape": [-1, 1000]}]}
CONFIG = {"max_batch_size": 8, "input": [{"name": "in", "format": "FORMAT_NCHW"}]}


def test_size_and_layout_from_metadata_and_config() -> None:
    model = parse_model(METADATA, CONFIG)
    assert (model.channels, model.height, model.width, model.format) == (3, 224, 200, "FORMAT_NCHW")
    grpc_json = {**METADATA, "inputs": [{"name": "in", "datatype": "FP32", "shape": ["-1", "224", "200", "3"]}]}
    nhwc = parse_model(grpc_json, {"max_batch_size": "8", "input": [{"name": "in", "format": "FORMAT_NHWC"}]})
    assert (nhwc.channels, nhwc.height, nhwc.width) == (3, 224, 200)


@pytest.mark.parametrize(("change", "error"), [
    ({"input": [{"name": "in"}]}, "unexpected input format FORMAT_NONE"),
    ({"max_batch_size": 0}, "expecting input to have 3 dimensions, model 'resnet' input has 4"),
])
def test_what_image_client_refuses(change: dict[str, object], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        parse_model(METADATA, {**CONFIG, **change})


def test_class_lines() -> None:
    batch = np.array([[b"0.9:3:cat", b"0.1:1:dog"], [b"0.5:2:a:b", b"0.25:0"]], dtype=object)
    assert class_lines(batch, batching=True) == [
        "    0.9 (3) = cat", "    0.1 (1) = dog", "    0.5 (2) = a:b", "    0.25 (0)"]
    assert class_lines(np.array([b"1.0:7:x"], dtype=object), batching=False) == ["    1.0 (7) = x"]
