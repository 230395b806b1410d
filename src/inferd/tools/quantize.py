"""`inferd quantize`: an ONNX model of a repository as INT8 (ONNX Runtime's dynamic or static quantization) or FP16
(ONNX Runtime's float16 converter: onnxconverter-common's, which it grew from, mis-wires a graph input that feeds
several nodes, as skl2onnx's MLP graphs do), written as a new version of the same model.

It runs the source and the new version on the same inputs with ONNX Runtime on the CPU and prints the median run
time of each (the speed-up) and the largest output deviation, so the user decides whether the new version ships.
Both versions are made to serve side by side when the config says nothing of versions (see
`onnx_folder.serve_versions`), so they can be compared on the live server too.

Weights are quantized per channel with 7-bit range (`reduce_range`): on x86 CPUs without VNNI, ONNX Runtime's
u8 x s8 kernels saturate with full 8-bit weights, and measured on an MLP the deviation fell from 11 % to 1.3 % of
the output range.

- dynamic: weights stored as INT8, activations quantized per batch at run time; no calibration. ONNX Runtime
  quantizes MatMul, Conv, Gather, Attention and LSTM nodes this way (not Gemm: a Gemm-only model gains nothing).
- static: weights and activations INT8 in the QDQ format, activation ranges calibrated (MinMax) on the
  `--calibration` inputs, or on random rows shaped from the model when none are given (ranges from random data
  fit real data only by luck: give real inputs for a version you mean to ship).
- fp16: weights and compute in float16, the inputs and outputs kept float32, so clients and the config are unchanged.
"""

from __future__ import annotations

import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from . import onnx_folder
from .arrays import GENERATED_BATCH, InputSpec, match_inputs, max_difference, random_inputs, read_arrays
from .errors import ToolError, need

MODES = ("dynamic", "static", "fp16")
DEFAULT_RUNS = 50
CALIBRATION_SETS = 8  # random input sets when no --calibration is given
WARMUP_RUNS = 3
PROVENANCE = "inferd.quantize"  # metadata key of a written model: "MODE from version N"


@dataclass(frozen=True)
class QuantizeOptions:
    model_dir: Path
    mode: str = "dynamic"
    calibration: Path | None = None
    from_version: int | None = None
    to_version: int | None = None
    runs: int = DEFAULT_RUNS


@dataclass(frozen=True)
class QuantizeResult:
    source: int
    version: int
    source_ms: float  # median run time of one input set
    quantized_ms: float
    deviations: dict[str, float]  # per output: the largest absolute difference over every input set
    scales: dict[str, float]  # per output: the largest absolute value the source gives, to read deviations by

    @property
    def speedup(self) -> float:
        return self.source_ms / self.quantized_ms if self.quantized_ms > 0 else float("nan")

    @property
    def deviation(self) -> float:
        return max(self.deviations.values(), default=0.0)


def _input_sets(options: QuantizeOptions, specs: Sequence[InputSpec], max_batch_size: int) -> list[dict[str, Any]]:
    """The calibration / comparison inputs: every .npz / .npy file given (a folder's in name order), or random."""
    if options.calibration is None:
        batch = min(max_batch_size, 32) if max_batch_size > 0 else GENERATED_BATCH
        return [random_inputs(specs, batch, seed=i) for i in range(CALIBRATION_SETS)]
    path = options.calibration
    files = sorted(p for p in path.iterdir() if p.suffix in (".npy", ".npz")) if path.is_dir() else [path]
    if not files:
        raise ToolError(f"{path}: holds no .npy or .npz file")
    return [match_inputs(read_arrays(f), specs, str(f)) for f in files]


def _quantized_from(path: Path) -> str | None:
    """The mode a model file was written by `inferd quantize` with (its metadata says), else None."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next((p.value for p in model.metadata_props if p.key == PROVENANCE), None)


def _pick_versions(options: QuantizeOptions) -> tuple[int, int]:
    """The source (default: the highest version not itself written by this command) and the new version."""
    found = onnx_folder.versions(options.model_dir)
    if not found:
        raise ToolError(f"{options.model_dir}: no version folder holds a {onnx_folder.MODEL_FILE}")
    originals = [v for v in found
                 if _quantized_from(options.model_dir / str(v) / onnx_folder.MODEL_FILE) is None] or found
    source = options.from_version if options.from_version is not None else originals[-1]
    if source not in found:
        raise ToolError(f"--from-version {source}: {options.model_dir / str(source) / onnx_folder.MODEL_FILE} "
                        f"does not exist (versions: {', '.join(map(str, found))})")
    target = options.to_version if options.to_version is not None else found[-1] + 1
    if target < 1 or (options.model_dir / str(target)).exists():
        raise ToolError(f"--to-version {target}: {options.model_dir / str(target)} "
                        f"{'exists' if target >= 1 else 'is not a version'}: choose another")
    return source, target


class _Reader:
    """onnxruntime.quantization's CalibrationDataReader over our input sets."""

    def __init__(self, sets: Sequence[dict[str, Any]]) -> None:
        self._sets: Iterator[dict[str, Any]] = iter(sets)

    def get_next(self) -> dict[str, Any] | None:
        return next(self._sets, None)


def _quantize(mode: str, source: Path, target: Path, sets: Sequence[dict[str, Any]], version: int) -> None:
    _convert(mode, source, target, sets)
    onnx = need("onnx", "onnx")
    model = onnx.load(str(target))
    onnx.helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props},
                                        PROVENANCE: f"{mode} from version {version}"})
    onnx.save_model(model, str(target))


def _convert(mode: str, source: Path, target: Path, sets: Sequence[dict[str, Any]]) -> None:
    if mode == "fp16":
        onnx = need("onnx", "onnx")
        float16 = need("onnxruntime.transformers.float16", "onnxruntime", "onnx")
        with warnings.catch_warnings():  # one warning per weight below float16's smallest, rounded to it
            warnings.simplefilter("ignore", UserWarning)
            model = float16.convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
        onnx.save_model(model, str(target))
        return
    quantization = need("onnxruntime.quantization", "onnxruntime", "onnx")
    with tempfile.TemporaryDirectory() as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        # ORT's recommended pre-processing: shape inference and graph clean-up, so more nodes quantize.
        quantization.quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        if mode == "dynamic":
            quantization.quantize_dynamic(str(prepared), str(target), weight_type=quantization.QuantType.QInt8,
                                          per_channel=True, reduce_range=True)
        else:
            quantization.quantize_static(str(prepared), str(target), _Reader(sets),
                                         quant_format=quantization.QuantFormat.QDQ,
                                         activation_type=quantization.QuantType.QUInt8,
                                         weight_type=quantization.QuantType.QInt8, per_channel=True,
                                         reduce_range=True)


def _median_ms(session: Any, inputs: dict[str, Any], runs: int) -> float:
    for _ in range(WARMUP_RUNS):
        onnx_folder.run(session, inputs)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        onnx_folder.run(session, inputs)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e3


def quantize(options: QuantizeOptions, out: TextIO | None = None) -> QuantizeResult:
    out = out or sys.stdout
    if options.mode not in MODES:
        raise ToolError(f"--mode must be one of {', '.join(MODES)}")
    if options.runs < 1:
        raise ToolError("--runs must be at least 1")
    config = onnx_folder.read_model_config(options.model_dir)
    source, version = _pick_versions(options)
    source_path = options.model_dir / str(source) / onnx_folder.MODEL_FILE
    original = onnx_folder.session(source_path)
    sets = _input_sets(options, onnx_folder.input_specs(original), config.max_batch_size)
    target_path = options.model_dir / str(version) / onnx_folder.MODEL_FILE
    target_path.parent.mkdir(parents=True)
    try:
        _quantize(options.mode, source_path, target_path, sets, source)
        quantized = onnx_folder.session(target_path)
    except Exception as exc:
        shutil.rmtree(target_path.parent)  # no half-written version for the server to pick up
        if isinstance(exc, ToolError):
            raise
        raise ToolError(f"{options.mode} quantization failed: {type(exc).__name__}: "
                        f"{' '.join(str(exc).split())[:400]}") from None
    print(f"wrote {target_path} ({options.mode}) from version {source}", file=out)
    deviations: dict[str, float] = {}
    scales: dict[str, float] = {}
    for inputs in sets:
        expected = onnx_folder.run(original, inputs)
        for name, diff in max_difference(expected, onnx_folder.run(quantized, inputs)).items():
            deviations[name] = max(deviations.get(name, 0.0), diff)
            scales[name] = max(scales.get(name, 0.0), float(np.abs(expected[name].astype(np.float64)).max()))
    result = QuantizeResult(source, version, _median_ms(original, sets[0], options.runs),
                            _median_ms(quantized, sets[0], options.runs), deviations, scales)
    _report(result, options, sets, out)
    print(onnx_folder.serve_versions(options.model_dir, config, [source, version]), file=out)
    return result


def _report(result: QuantizeResult, options: QuantizeOptions, sets: Sequence[dict[str, Any]], out: TextIO) -> None:
    shapes = ", ".join(f"{n} {list(a.shape)}" for n, a in sets[0].items())
    print(f"ONNX Runtime on the CPU, {shapes}, median of {options.runs} runs:", file=out)
    print(f"  version {result.source:<4} {result.source_ms:9.3f} ms", file=out)
    print(f"  version {result.version:<4} {result.quantized_ms:9.3f} ms   speed-up {result.speedup:.2f}x", file=out)
    print(f"deviation on {len(sets)} input set(s) (largest |difference|, and the largest |output| for scale):",
          file=out)
    width = max((len(n) for n in result.deviations), default=0)
    for name, diff in result.deviations.items():
        print(f"  {name.ljust(width)}  {diff:.3g}  (|output| up to {result.scales[name]:.3g})", file=out)


def run_quantize(options: QuantizeOptions, out: TextIO | None = None) -> int:
    try:
        quantize(options, out)
    except ToolError as exc:
        print(f"inferd quantize: {exc}", file=sys.stderr)
        return exc.status
    return 0
