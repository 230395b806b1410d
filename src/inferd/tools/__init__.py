"""Tools that work on a model before and around serving it: `inferd convert` (a trained model to ONNX, as a ready
repository folder), `inferd quantize` (an ONNX model to INT8 or FP16, as a new version) and `inferd analyze` (the
config that serves fastest under a latency budget, measured against a live server).

Each framework's converter is an optional extra (`pip install 'inferd[convert]'`), imported only when used.
"""

from .errors import ToolError

__all__ = ["ToolError"]
