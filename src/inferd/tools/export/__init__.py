"""Trained models as ONNX: one module per framework, each giving an `Original` that runs the model as it is and
exports it, so `inferd convert` can compare the two on the same inputs.

Which framework a path is comes from its form: a `.pt` (TorchScript) or `.pt2` (torch.export) file, a SavedModel
folder (holding saved_model.pb), a `.joblib` / `.pkl` scikit-learn estimator, an XGBoost `.json` / `.ubj` booster, a
LightGBM `.txt` booster.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ToolError
from .base import Original

__all__ = ["Original", "open_original"]


def open_original(path: Path) -> Original:
    """The model at `path`, loaded by its framework (ToolError when the form is unknown or a package is missing)."""
    suffix = path.suffix.lower()
    if path.is_dir():
        if not (path / "saved_model.pb").is_file():
            raise ToolError(f"{path}: a folder must be a TensorFlow SavedModel (holding saved_model.pb)")
        from .savedmodel import SavedModelOriginal

        return SavedModelOriginal(path)
    if not path.is_file():
        raise ToolError(f"{path}: no such file or folder")
    if suffix in (".pt", ".pth", ".pt2"):
        from .pytorch import open_torch

        return open_torch(path)
    if suffix in (".joblib", ".pkl", ".pickle"):
        from .classic import SklearnOriginal

        return SklearnOriginal(path)
    if suffix in (".json", ".ubj"):
        from .classic import XGBoostOriginal

        return XGBoostOriginal(path)
    if suffix == ".txt":
        from .classic import LightGBMOriginal

        return LightGBMOriginal(path)
    raise ToolError(f"{path}: unknown model form '{suffix}' (convert takes .pt, .pt2, a SavedModel folder, .joblib, "
                    ".pkl, .json, .ubj or .txt)")
