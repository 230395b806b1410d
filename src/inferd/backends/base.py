"""The Backend contract: what a framework module implements so the server can serve its models."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from ..config import ModelConfig


class Backend(Protocol):
    """One loaded copy of a model (one instance of its instance group).

    `releases_gil` says whether `execute` can run on an instance thread (True: ONNX Runtime, PyTorch,
    TensorFlow) or needs an instance process (False: plain Python code).

    Optional: `requirements_file(config, files) -> Path | None`, the requirements file that a model format carries
    itself (a TorchServe archive's), which the manager then uses instead of a `requirements.txt` beside the files
    to give instance processes an environment of their own; None falls back to that `requirements.txt`.
    """

    releases_gil: bool

    def autocomplete(self, config: ModelConfig, files: Path) -> ModelConfig:
        """Fill what the config leaves out (inputs, outputs, max_batch_size) from the model file in `files`."""
        ...

    def load(self, config: ModelConfig, files: Path, device: str) -> None:
        """Load the model from the version folder `files` on `device` ("cpu" or "cuda:N")."""
        ...

    def execute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one (possibly batched) call; inputs and outputs in the model's own shapes."""
        ...

    def unload(self) -> None:
        ...
