"""A served model version: its checked configuration, its instances' scheduler, and the per-request checks.

The checks here are the same for every protocol, so every frontend gets the same errors with the same words.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .classification import class_count, top_classes
from .config import ModelConfig, v2_datatype
from .observability import ModelStatistics
from .scheduling import Scheduler
from .types import InferenceRequest, InferError, Tensors, datatype_of

if TYPE_CHECKING:
    from .backends import Backend


@dataclass(slots=True, frozen=True)
class TensorSpec:
    name: str
    datatype: str
    dims: tuple[int, ...]  # without the batch dimension
    reshape: tuple[int, ...] | None
    optional: bool = False

    def metadata(self, batching: bool) -> dict[str, Any]:
        shape = ([-1] if batching else []) + list(self.dims)
        return {"name": self.name, "datatype": self.datatype, "shape": shape}


def _specs(tensors: Any) -> dict[str, TensorSpec]:
    return {
        t.name: TensorSpec(
            name=t.name,
            datatype=v2_datatype(t.data_type),
            dims=tuple(t.dims),
            reshape=tuple(t.reshape.shape) if t.HasField("reshape") else None,
            optional=bool(getattr(t, "optional", False)),
        )
        for t in tensors
    }


def _shape_matches(shape: tuple[int, ...], dims: tuple[int, ...]) -> bool:
    if len(shape) != len(dims):
        return False
    for got, want in zip(shape, dims, strict=False):
        if want != -1 and got != want:
            return False
    return True


def _fmt(shape: tuple[int, ...] | list[int]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


class ServedModel:
    """One loaded version of a model."""

    def __init__(self, name: str, version: int, config: ModelConfig, platform: str, scheduler: Scheduler,
                 stats: ModelStatistics) -> None:
        self.name = name
        self.version = version
        self.version_str = str(version)
        self.config = config
        self.platform = platform
        self.scheduler = scheduler
        self.stats = stats
        self.max_batch_size = int(config.max_batch_size)
        self.inputs = _specs(config.input)
        self.outputs = _specs(config.output)
        self._required = [s.name for s in self.inputs.values() if not s.optional]
        self.partial_outputs = False  # outputs may be absent from an answer (ensembles with skipped steps)
        self.labels: dict[str, list[str]] = {}  # per output, from its label_filename (set when the model loads)
        # Makes one more instance as the first ones were made (set by the manager for models with instances; the
        # scaling/ package calls it to add an instance, or to wake a model scaled to zero).
        self.spawn: Callable[[], Backend] | None = None
        # Its backend takes whole protocol messages (Seldon's wrapper classes), not only tensors.
        self.takes_messages = any(getattr(i, "takes_messages", False) for i in scheduler.pool.instances)
        batching = self.max_batch_size > 0
        self._metadata_io = (
            [s.metadata(batching) for s in self.inputs.values()],
            [s.metadata(batching) for s in self.outputs.values()],
        )

    def metadata(self, versions: list[str]) -> dict[str, Any]:
        inputs, outputs = self._metadata_io
        return {"name": self.name, "versions": versions, "platform": self.platform,
                "inputs": inputs, "outputs": outputs}

    def check_inputs(self, request: InferenceRequest) -> tuple[Tensors, int]:
        """The request's inputs, checked against the config and shaped for the model; and the batch size."""
        given = request.inputs
        specs = self.inputs
        for required in self._required:
            if required not in given:
                raise self._missing_inputs(given, [n for n in self._required if n not in given])
        batch = 0
        feeds: Tensors = {}
        for name, array in given.items():
            spec = specs.get(name)
            if spec is None:
                raise self._unexpected_input(name, [])
            declared = request.datatypes.get(name) or datatype_of(array)
            if declared != spec.datatype:
                raise InferError.invalid(f"inference input '{name}' data-type is '{declared}', but model "
                                         f"'{self.name}' expects '{spec.datatype}'")
            shape = array.shape
            batching = self.max_batch_size > 0
            given_dims = shape[1:] if batching else shape
            # One tuple comparison in C for the usual exact match; -1 dimensions through _shape_matches.
            if (given_dims != spec.dims and not _shape_matches(given_dims, spec.dims)) or (batching and not shape):
                want = (-1, *spec.dims) if batching else spec.dims
                raise InferError.invalid(f"unexpected shape for input '{name}' for model '{self.name}'. "
                                         f"Expected {_fmt(want)}, got {_fmt(shape)}")
            if batching:
                rows = shape[0]
                if batch == 0:
                    batch = rows
                elif rows != batch:
                    raise InferError.invalid(f"inputs of model '{self.name}' have different batch sizes "
                                             f"({batch} and {rows}), '{name}' has {rows}")
                if rows < 1 or rows > self.max_batch_size:
                    raise InferError.invalid(f"inference request batch-size must be <= {self.max_batch_size} "
                                             f"for '{self.name}', got {rows} for input '{name}'")
            if spec.reshape is not None:
                lead = (shape[0],) if self.max_batch_size > 0 else ()
                try:
                    array = array.reshape(lead + spec.reshape)
                except ValueError:
                    raise InferError.invalid(f"input '{name}' of shape {_fmt(shape)} cannot be reshaped to "
                                             f"{_fmt(spec.reshape)} for model '{self.name}'") from None
            feeds[name] = array
        return feeds, max(batch, 1)

    def _missing_inputs(self, given: Tensors, missing: list[str]) -> InferError:
        """The error for a request that lacks a required input (built only on this error path). A name the model
        does not have is named first, in Triton's words: most often it is the missing input, misspelt."""
        unexpected = next((n for n in given if n not in self.inputs), None)
        if unexpected is not None:
            return self._unexpected_input(unexpected, missing)
        return InferError.invalid(
            f"expected {len(self._required)} inputs but got {len(given)} inputs for model '{self.name}': "
            f"missing required input(s) {missing}")

    def _unexpected_input(self, name: str, missing: list[str]) -> InferError:
        """Triton's words for an input name the model does not have, with the names it does have."""
        lacking = f"; missing {', '.join(missing)}" if missing else ""
        return InferError.invalid(f"unexpected inference input '{name}' for model '{self.name}' "
                                  f"(its inputs are {', '.join(self.inputs)}{lacking})")

    def check_outputs(self, request: InferenceRequest) -> list[str]:
        """Names of the outputs to return, in the order the client asked for them (all when it asked for none)."""
        if not request.outputs:
            return list(self.outputs)
        names = []
        for out in request.outputs:
            if out.name not in self.outputs:
                raise InferError.invalid(f"unexpected inference output '{out.name}' for model '{self.name}'")
            names.append(out.name)
        return names

    @staticmethod
    def classifications(request: InferenceRequest) -> dict[str, int]:
        """The outputs the client asked for as top-k classes (the `classification` parameter), with their k."""
        classes: dict[str, int] = {}
        for out in request.outputs or ():
            if out.parameters:
                k = class_count(out.name, out.parameters)
                if k:
                    classes[out.name] = k
        return classes

    def classify(self, outputs: Tensors, classes: dict[str, int]) -> None:
        """Replace each output asked for as classes by its top-k strings (Triton's classification extension)."""
        batched = self.max_batch_size > 0
        for name, k in classes.items():
            if name in outputs:
                outputs[name] = top_classes(name, outputs[name], k, batched, self.labels.get(name, ()))

    def shape_outputs(self, results: Tensors, names: list[str], batch: int) -> Tensors:
        """The outputs the client asked for, in the config's declared shapes."""
        outputs: Tensors = {}
        for name in names:
            try:
                value = results[name]
            except KeyError:
                if self.partial_outputs:  # an ensemble whose steps that produce it were skipped
                    continue
                raise InferError.internal(f"model '{self.name}' did not produce output '{name}'") from None
            spec = self.outputs[name]
            if spec.reshape is not None:
                lead = (batch,) if self.max_batch_size > 0 else ()
                value = value.reshape(lead + spec.dims)
            outputs[name] = value
        return outputs
