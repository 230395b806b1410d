"""Build an example Triton-style model repository for inferd (ONNX models and one Python model, add_sub).

Only ``numpy`` and ``onnx`` are needed: every model is built with ``onnx.helper``
and filled with seeded synthetic weights, so nothing is downloaded and every
run produces the same files.

Usage::

    python examples/build_repository.py [OUT_DIR] [--force]

Models whose files already exist (with this script's config) are skipped unless ``--force`` is given.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

OPSET = 17
IR_VERSION = 8  # the IR version of opset 17; any onnxruntime >= 1.10 loads it
SEED = 20240601
DEFAULT_OUT = Path(__file__).resolve().parent / "model_repository"
FP32, INT32, STRING = TensorProto.FLOAT, TensorProto.INT32, TensorProto.STRING


def tensor(name: str, elem: int, shape: Sequence[int | str]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, list(shape))


class GraphBuilder:
    """Accumulates nodes and seeded initializers for one ONNX graph."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[TensorProto] = []

    def const(self, name: str, value: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(value.astype(np.float32), name))
        return name

    def op(self, op_type: str, inputs: Sequence[str], out: str, **attrs: Any) -> str:
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=out, **attrs))
        return out

    def normal(self, shape: tuple[int, ...], std: float) -> np.ndarray:
        return self.rng.standard_normal(shape, dtype=np.float32) * np.float32(std)

    def conv(self, x: str, cin: int, cout: int, k: int, name: str, stride: int = 1) -> str:
        # He (fan-in) init keeps the scale of activations roughly constant with depth.
        std = math.sqrt(2 / (cin * k * k))
        w = self.const(f"{name}.weight", self.normal((cout, cin, k, k), std))
        pads = [k // 2] * 4
        return self.op("Conv", [x, w], name, kernel_shape=[k, k], strides=[stride] * 2, pads=pads)

    def bn(self, x: str, c: int, name: str, gain: float = 1.0) -> str:
        r = self.rng
        params = {
            "weight": gain * (1.0 + 0.1 * r.standard_normal(c)),
            "bias": 0.05 * r.standard_normal(c),
            "running_mean": 0.05 * r.standard_normal(c),
            "running_var": 1.0 + 0.1 * np.abs(r.standard_normal(c)),
        }
        inputs = [x] + [self.const(f"{name}.{k}", v) for k, v in params.items()]
        return self.op("BatchNormalization", inputs, name, epsilon=1e-5)

    def relu(self, x: str) -> str:
        return self.op("Relu", [x], f"{x}.relu")

    def stem(self, x: str, conv: str, norm: str, pool: str) -> str:
        """7x7/2 convolution + BN + ReLU + 3x3/2 max pool, shared by ResNet and DenseNet."""
        x = self.relu(self.bn(self.conv(x, 3, 64, 7, conv, stride=2), 64, norm))
        return self.op("MaxPool", [x], pool, kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4)

    def model(
        self,
        inputs: list[onnx.ValueInfoProto],
        outputs: list[onnx.ValueInfoProto],
        name: str,
    ) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, name, inputs, outputs, self.inits)
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", OPSET)],
            producer_name="inferd-examples",
            ir_version=IR_VERSION,
        )
        onnx.checker.check_model(model)
        return model

    def classifier_params(
        self, inp: onnx.ValueInfoProto, feat: str, cin: int, ncls: int = 1000
    ) -> tuple[np.ndarray, np.ndarray]:
        """Random classifier weights whose logits depend on the input image.

        With random weights the pooled features are dominated by an input-independent
        mean, so a plain random classifier gives every image the same logits. Run the
        backbone (onnx's numpy reference runtime) on two synthetic 112x112 images, white
        and smooth noise, and fold the features' centering and scale into the classifier.
        """
        backbone = self.model([inp], [tensor(feat, FP32, [1, cin, 1, 1])], "backbone")
        run = ReferenceEvaluator(backbone)
        probe_rng, feats = np.random.default_rng(SEED), []
        for size in (112, 28):
            x = probe_rng.standard_normal((1, 3, size, size), dtype=np.float32)
            x = np.kron(x, np.ones((1, 1, 112 // size, 112 // size), np.float32))
            (out,) = run.run([feat], {inp.name: x})
            feats.append(np.asarray(out).reshape(cin))
        f = np.stack(feats).astype(np.float64)
        mu, sigma = f.mean(axis=0), f.std() + 1e-6
        w = self.normal((ncls, cin), 3.0 / math.sqrt(cin)) / np.float32(sigma)
        # Rounded, so that a last-bit difference in the probe does not change the file.
        bias = np.round(-(w.astype(np.float64) @ mu), 3) + self.normal((ncls,), 0.01)
        return w, bias


# --------------------------------------------------------------------------- models


def build_simple() -> onnx.ModelProto:
    g = GraphBuilder(SEED)
    g.op("Add", ["INPUT0", "INPUT1"], "OUTPUT0")
    g.op("Sub", ["INPUT0", "INPUT1"], "OUTPUT1")
    io = [tensor(n, INT32, ["batch", 16]) for n in ("INPUT0", "INPUT1", "OUTPUT0", "OUTPUT1")]
    return g.model(io[:2], io[2:], "simple")


def build_simple_string() -> onnx.ModelProto:
    """Triton's `simple_string`: INPUT0 and INPUT1 hold integers written as strings; OUTPUT0 is their sum and
    OUTPUT1 their difference, as strings (what NVIDIA's simple_*_string_infer_client.py examples check)."""
    g = GraphBuilder(SEED)
    g.op("Cast", ["INPUT0"], "a", to=INT32)
    g.op("Cast", ["INPUT1"], "b", to=INT32)
    g.op("Cast", [g.op("Add", ["a", "b"], "sum")], "OUTPUT0", to=STRING)
    g.op("Cast", [g.op("Sub", ["a", "b"], "difference")], "OUTPUT1", to=STRING)
    io = [tensor(n, STRING, ["batch", 16]) for n in ("INPUT0", "INPUT1", "OUTPUT0", "OUTPUT1")]
    return g.model(io[:2], io[2:], "simple_string")


def build_mlp() -> onnx.ModelProto:
    g = GraphBuilder(SEED + 1)
    h = "INPUT0"
    for i, (cin, cout) in enumerate([(64, 256), (256, 10)]):
        w = g.const(f"fc{i}.weight", g.normal((cout, cin), math.sqrt(2 / cin)))
        b = g.const(f"fc{i}.bias", g.normal((cout,), 0.01))
        h = g.op("Gemm", [h, w, b], "OUTPUT0" if i else "fc0", transB=1)
        h = h if i else g.relu(h)
    inp = tensor("INPUT0", FP32, ["batch", 64])
    return g.model([inp], [tensor("OUTPUT0", FP32, ["batch", 10])], "mlp")


def bottleneck(g: GraphBuilder, x: str, cin: int, planes: int, stride: int, name: str) -> str:
    cout = planes * 4
    y = g.relu(g.bn(g.conv(x, cin, planes, 1, f"{name}.conv1"), planes, f"{name}.bn1"))
    # ResNet v1.5: the stride sits in the 3x3 convolution.
    y = g.conv(y, planes, planes, 3, f"{name}.conv2", stride)
    y = g.relu(g.bn(y, planes, f"{name}.bn2"))
    # A small gain on the branch's last BN keeps the residual stream from growing.
    y = g.bn(g.conv(y, planes, cout, 1, f"{name}.conv3"), cout, f"{name}.bn3", gain=0.2)
    if stride != 1 or cin != cout:
        x = g.conv(x, cin, cout, 1, f"{name}.downsample.0", stride)
        x = g.bn(x, cout, f"{name}.downsample.1")
    return g.relu(g.op("Add", [y, x], f"{name}.add"))


def build_resnet50() -> onnx.ModelProto:
    g = GraphBuilder(SEED + 2)
    x, cin = g.stem("input", "conv1", "bn1", "maxpool"), 64
    for li, (planes, blocks) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3), strict=True)):
        for bi in range(blocks):
            stride = 2 if bi == 0 and li > 0 else 1
            x = bottleneck(g, x, cin, planes, stride, f"layer{li + 1}.{bi}")
            cin = planes * 4
    x = g.op("GlobalAveragePool", [x], "avgpool")
    w, b = g.classifier_params(tensor("input", FP32, [1, 3, 224, 224]), x, cin)
    x = g.op("Flatten", [x], "flatten", axis=1)
    g.op("Gemm", [x, g.const("fc.weight", w), g.const("fc.bias", b)], "output", transB=1)
    inp = tensor("input", FP32, ["batch", 3, 224, 224])
    return g.model([inp], [tensor("output", FP32, ["batch", 1000])], "resnet50")


def build_densenet121(growth: int = 32, bn_size: int = 4) -> onnx.ModelProto:
    g = GraphBuilder(SEED + 3)
    x, c = g.stem("data_0", "conv0", "norm0", "pool0"), 64
    for bi, layers in enumerate((6, 12, 24, 16)):
        for li in range(layers):
            name = f"denseblock{bi + 1}.denselayer{li + 1}"
            y = g.relu(g.bn(x, c, f"{name}.norm1"))
            y = g.conv(y, c, bn_size * growth, 1, f"{name}.conv1")
            y = g.relu(g.bn(y, bn_size * growth, f"{name}.norm2"))
            y = g.conv(y, bn_size * growth, growth, 3, f"{name}.conv2")
            x, c = g.op("Concat", [x, y], f"{name}.concat", axis=1), c + growth
        if bi < 3:  # transition: BN + ReLU + 1x1 conv halving the channels + 2x2 avg pool
            name = f"transition{bi + 1}"
            x = g.conv(g.relu(g.bn(x, c, f"{name}.norm")), c, c // 2, 1, f"{name}.conv")
            x = g.op("AveragePool", [x], f"{name}.pool", kernel_shape=[2, 2], strides=[2, 2])
            c //= 2
    x = g.op("GlobalAveragePool", [g.relu(g.bn(x, c, "norm5"))], "pool5")
    inp = tensor("data_0", FP32, [1, 3, 224, 224])
    w, b = g.classifier_params(inp, x, c)
    # The classifier is a 1x1 convolution, as in the Caffe2 DenseNet-121 Triton ships.
    params = [g.const("fc6.weight", w.reshape(1000, c, 1, 1)), g.const("fc6.bias", b)]
    g.op("Conv", [x, *params], "fc6_1", kernel_shape=[1, 1])
    return g.model([inp], [tensor("fc6_1", FP32, [1, 1000, 1, 1])], "densenet121")


# --------------------------------------------------------------------------- configs

NCHW = "format: FORMAT_NCHW"
LABELS = "".join(f"class_{i:04d}\n" for i in range(1000))  # ImageNet-shaped placeholders


def io(name: str, dtype: str, dims: str, *extra: str) -> str:
    """One ``input``/``output`` entry of a config.pbtxt, in Triton's text format."""
    lines = [f'name: "{name}"', f"data_type: TYPE_{dtype}", f"dims: [ {dims} ]", *extra]
    return "  {\n" + "".join(f"    {line}\n" for line in lines) + "  }"


def config(name: str, max_batch: int, inputs: list[str], outputs: list[str]) -> str:
    sep = ",\n"
    return (
        f'name: "{name}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: {max_batch}\n'
        f"input [\n{sep.join(inputs)}\n]\noutput [\n{sep.join(outputs)}\n]\n"
    )


class Spec(NamedTuple):
    name: str
    build: Callable[[], onnx.ModelProto]
    config: str
    labels: str | None = None  # name of the labels file written next to config.pbtxt


SPECS = [
    Spec(
        "simple",
        build_simple,
        config(
            "simple",
            8,
            [io("INPUT0", "INT32", "16"), io("INPUT1", "INT32", "16")],
            [io("OUTPUT0", "INT32", "16"), io("OUTPUT1", "INT32", "16")],
        ),
    ),
    Spec(
        "simple_string",
        build_simple_string,
        config(
            "simple_string",
            8,
            [io("INPUT0", "STRING", "16"), io("INPUT1", "STRING", "16")],
            [io("OUTPUT0", "STRING", "16"), io("OUTPUT1", "STRING", "16")],
        ),
    ),
    Spec("mlp", build_mlp, config("mlp", 256, [io("INPUT0", "FP32", "64")], [io("OUTPUT0", "FP32", "10")])),
    Spec(
        "resnet50",
        build_resnet50,
        config(
            "resnet50",
            32,
            [io("input", "FP32", "3, 224, 224", NCHW)],
            [io("output", "FP32", "1000", 'label_filename: "labels.txt"')],
        ),
        "labels.txt",
    ),
    Spec(
        "densenet_onnx",
        build_densenet121,
        config(
            "densenet_onnx",
            0,
            [io("data_0", "FP32", "3, 224, 224", NCHW, "reshape { shape: [ 1, 3, 224, 224 ] }")],
            [
                io(
                    "fc6_1",
                    "FP32",
                    "1000",
                    "reshape { shape: [ 1, 1000, 1, 1 ] }",
                    'label_filename: "densenet_labels.txt"',
                )
            ],
        ),
        "densenet_labels.txt",
    ),
]


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _holds(path: Path, text: str) -> bool:
    try:
        return path.read_text() == text
    except (OSError, UnicodeDecodeError):
        return False


def build_one(spec: Spec, out_dir: Path, force: bool) -> str:
    model_dir = out_dir / spec.name
    model_path = model_dir / "1" / "model.onnx"
    files = {"config.pbtxt": spec.config}
    if spec.labels:
        files[spec.labels] = LABELS
    # Up to date when every file is there and the config is this script's (a changed model changes its config).
    if not force and model_path.exists() and all(_holds(model_dir / f, text) for f, text in files.items()):
        return f"{spec.name}: up to date ({model_path})"
    write_atomic(model_path, spec.build().SerializeToString())
    for fname, text in files.items():
        write_atomic(model_dir / fname, text.encode())
    return f"{spec.name}: built {model_path} ({model_path.stat().st_size / 1e6:.1f} MB)"


# A Python model in Triton's python-backend form (the shape of NVIDIA's add_sub example): no extra needed.
ADD_SUB_CONFIG = """name: "add_sub"
backend: "python"
input [
  { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] },
  { name: "INPUT1" data_type: TYPE_FP32 dims: [ 4 ] }
]
output [
  { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] },
  { name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 4 ] }
]
instance_group [ { kind: KIND_CPU } ]
"""
ADD_SUB_MODEL = '''"""OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1, written for Triton's python backend."""
import json

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.dtypes = [pb_utils.triton_string_to_numpy(pb_utils.get_output_config_by_name(config, name)["data_type"])
                       for name in ("OUTPUT0", "OUTPUT1")]

    def execute(self, requests):
        responses = []
        for request in requests:
            in0 = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            in1 = pb_utils.get_input_tensor_by_name(request, "INPUT1").as_numpy()
            out0 = pb_utils.Tensor("OUTPUT0", (in0 + in1).astype(self.dtypes[0]))
            out1 = pb_utils.Tensor("OUTPUT1", (in0 - in1).astype(self.dtypes[1]))
            responses.append(pb_utils.InferenceResponse(output_tensors=[out0, out1]))
        return responses

    def finalize(self):
        pass
'''


def build_python_model(out_dir: Path, force: bool) -> str:
    model_dir = out_dir / "add_sub"
    files = {model_dir / "config.pbtxt": ADD_SUB_CONFIG, model_dir / "1" / "model.py": ADD_SUB_MODEL}
    if not force and all(path.exists() for path in files):
        return f"add_sub: up to date ({model_dir / '1' / 'model.py'})"
    for path, text in files.items():
        write_atomic(path, text.encode())
    return f"add_sub: wrote {model_dir / '1' / 'model.py'} (Triton python backend)"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the example model repository.")
    parser.add_argument("out_dir", nargs="?", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--force", action="store_true", help="rebuild existing models")
    args = parser.parse_args(argv)
    for spec in SPECS:
        print(build_one(spec, args.out_dir, args.force), flush=True)
    print(build_python_model(args.out_dir, args.force), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
