"""`inferd convert`: a trained model to ONNX, as a repository folder the server serves as it is.

It writes `REPO/NAME/1/model.onnx` and `REPO/NAME/config.pbtxt`, runs the original and the ONNX model (ONNX
Runtime, CPU) on the same inputs — the `--sample-input` file, the example a torch.export program keeps, or random
rows shaped from the model — and prints the largest absolute difference of each output. The exit status is 1 when
the largest one exceeds the tolerance, so a script can stop a bad conversion before it ships.

The default tolerance, 1e-3, is above what float32 kernels reorder (ONNX Runtime fuses and reorders operations; a
scikit-learn estimator computes in float64 and its ONNX form in float32) and well below a wrong conversion, which
differs by whole units: a class label off by one, a missing activation.
"""

from __future__ import annotations

import math
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np

from . import onnx_folder
from .arrays import InputSpec, match_inputs, max_difference, random_inputs, read_arrays
from .errors import FAILED, ToolError
from .export import Original, open_original

DEFAULT_TOLERANCE = 1e-3
DEFAULT_MAX_BATCH_SIZE = 8
VERSION = 1


@dataclass(frozen=True)
class ConvertOptions:
    model_path: Path
    output: Path  # the repository
    name: str
    sample_input: Path | None = None
    opset: int | None = None
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    tolerance: float = DEFAULT_TOLERANCE


@dataclass(frozen=True)
class ConvertResult:
    model_dir: Path
    differences: dict[str, float]  # per output: the largest absolute difference
    largest: float  # NaN when an output's size differs


def _check_inputs(original: Original, options: ConvertOptions) -> dict[str, np.ndarray]:
    """The inputs both models run on."""
    specs = original.input_specs()
    if options.sample_input is not None:
        arrays = read_arrays(options.sample_input)
        if specs is None:  # TorchScript: the file's arrays, in order, are the inputs
            specs = [InputSpec(f"INPUT__{i}", a.dtype, (None, *a.shape[1:])) for i, (_, a) in enumerate(arrays)]
        return match_inputs(arrays, specs, str(options.sample_input))
    example = original.example()
    if example is not None:
        return example
    if specs is None:
        raise ToolError(f"a {original.framework} file does not record its inputs' shapes: give --sample-input "
                        "FILE.npy (one input) or FILE.npz (one array per input, in order)")
    return random_inputs(specs)


def convert(options: ConvertOptions, out: TextIO | None = None) -> ConvertResult:
    """Convert, write the folder, compare; ToolError for what stops it (exit status 2)."""
    out = out or sys.stdout
    if not options.name or "/" in options.name or options.name in (".", ".."):
        raise ToolError(f"--name '{options.name}' is not a model name")
    if options.max_batch_size < 0:
        raise ToolError("--max-batch-size must be >= 0")
    original = open_original(options.model_path)
    inputs = _check_inputs(original, options)
    opset = options.opset or original.default_opset
    print(f"converting {options.model_path} ({original.framework}) to ONNX, opset {opset}", file=out)
    try:
        model = original.to_onnx(inputs, opset, batched=options.max_batch_size > 0)
    except ToolError:
        raise
    except Exception as exc:  # each converter raises its own types for an operation it cannot express
        raise ToolError(f"{original.framework} to ONNX failed: {type(exc).__name__}: "
                        f"{' '.join(str(exc).split())[:400]}") from None
    model_dir = options.output / options.name
    path = onnx_folder.write_model(model_dir, VERSION, model)
    try:
        onnx_folder.write_config(model_dir, options.name, VERSION, options.max_batch_size)
    except ToolError:
        shutil.rmtree(path.parent)  # no model folder the server would half-read
        raise
    print(f"wrote {path} and {model_dir / onnx_folder.CONFIG_FILE}", file=out)
    expected = original.predict(inputs)
    session = onnx_folder.session(path)
    try:
        got = onnx_folder.run(session, inputs)
    except Exception as exc:  # ORT's own error types
        raise ToolError(f"onnxruntime cannot run the converted model on the check inputs: "
                        f"{' '.join(str(exc).split())[:300]}") from None
    if set(expected) != set(got) and len(expected) == len(got):  # same outputs, other names: by position
        expected = dict(zip(got, expected.values(), strict=True))
    differences = max_difference(expected, got)
    if not differences:
        raise ToolError(f"no output to compare: the original gives {', '.join(expected)}, the ONNX model "
                        f"{', '.join(got)}")
    largest = max(differences.values(), key=lambda d: math.inf if math.isnan(d) else d)
    _print_differences(differences, got, inputs, out)
    verdict = "within" if largest <= options.tolerance else "EXCEEDS"
    print(f"largest difference {largest:.3g} {verdict} the tolerance {options.tolerance:g}", file=out)
    return ConvertResult(model_dir, differences, largest)


def _print_differences(differences: dict[str, float], got: dict[str, np.ndarray], inputs: dict[str, np.ndarray],
                       out: TextIO) -> None:
    shapes = ", ".join(f"{n} {list(a.shape)}" for n, a in inputs.items())
    print(f"compared on {shapes}:", file=out)
    width = max(len(n) for n in differences)
    for name, diff in differences.items():
        print(f"  {name.ljust(width)}  shape {list(got[name].shape)}  max |difference| {diff:.3g}", file=out)


def run_convert(options: ConvertOptions, out: TextIO | None = None) -> int:
    """The command: 0 within the tolerance, 1 over it, 2 when it could not convert."""
    try:
        result = convert(options, out)
    except ToolError as exc:
        print(f"inferd convert: {exc}", file=sys.stderr)
        return exc.status
    return 0 if result.largest <= options.tolerance else FAILED
