"""TorchServe's `BaseHandler`: load the archive's model, then preprocess -> inference -> postprocess per batch.

`initialize(context)` loads the serialized file named by the manifest from `model_dir`: with a `modelFile` (eager
mode) it imports that file, instantiates its one class and loads the state dict (`weights_only=True`); without one a
`.pt` file is TorchScript (`torch.jit.load`) and a `.pt2` file a torch.export program. It reads
`index_to_name.json` into `self.mapping` when the archive has one. ONNX and TensorRT serialized files are not
supported. The defaults of the steps are TorchServe's: `preprocess` makes a tensor of the data, `inference` calls
the model under `torch.inference_mode()`, `postprocess` returns `tolist()`.
"""

from __future__ import annotations

import abc
import importlib
import logging
import os
import time
from typing import Any

import torch

from ..utils.util import list_classes_from_module, load_label_mapping

logger = logging.getLogger(__name__)

__all__ = ["BaseHandler"]


class BaseHandler(abc.ABC):  # noqa: B024 - abstract in name, as TorchServe's: every method has a default
    def __init__(self) -> None:
        self.model: Any = None
        self.mapping: dict[str, str] | None = None
        self.device: torch.device | None = None
        self.initialized = False
        self.context: Any = None
        self.model_pt_path: str | None = None
        self.manifest: dict[str, Any] | None = None
        self.map_location: str | None = None
        self.explain = False
        self.target = 0
        self.profiler_args: dict[str, Any] = {}

    def initialize(self, context: Any) -> None:
        properties = context.system_properties
        gpu_id = properties.get("gpu_id")
        if torch.cuda.is_available() and gpu_id is not None:
            self.map_location = "cuda"
            self.device = torch.device(f"cuda:{gpu_id}")
        else:
            self.map_location = "cpu"
            self.device = torch.device("cpu")
        self.manifest = manifest = context.manifest
        model_dir = properties.get("model_dir")
        self.model_pt_path = None
        serialized = manifest["model"].get("serializedFile")
        if serialized:
            self.model_pt_path = os.path.join(model_dir, serialized)
        model_file = manifest["model"].get("modelFile", "")
        if model_file:
            logger.debug("Loading eager model")
            self.model = self._load_pickled_model(model_dir, model_file, self.model_pt_path)
            self.model.to(self.device)
            self.model.eval()
        elif self.model_pt_path is not None and self.model_pt_path.endswith(".pt"):
            self.model = self._load_torchscript_model(self.model_pt_path)
            self.model.eval()
        elif self.model_pt_path is not None and self.model_pt_path.endswith(".pt2"):
            self.model = torch.export.load(self.model_pt_path).module().to(self.device)
        else:
            raise RuntimeError("No model weights could be loaded")
        logger.debug("Model file %s loaded successfully", self.model_pt_path)
        self.mapping = load_label_mapping(os.path.join(model_dir, "index_to_name.json"))
        self.initialized = True

    def _load_torchscript_model(self, model_pt_path: str) -> Any:
        return torch.jit.load(model_pt_path, map_location=self.device)

    def _load_pickled_model(self, model_dir: str, model_file: str, model_pt_path: str | None) -> Any:
        model_def_path = os.path.join(model_dir, model_file)
        if not os.path.isfile(model_def_path):
            raise RuntimeError("Missing the model.py file")
        module = importlib.import_module(model_file.split(".")[0])
        model_class_definitions = list_classes_from_module(module)
        if len(model_class_definitions) != 1:
            raise ValueError(f"Expected only one class as model definition. {model_class_definitions}")
        model = model_class_definitions[0]()
        if model_pt_path:
            map_location = None if torch.cuda.is_available() and self.map_location == "cuda" else self.map_location
            state_dict = torch.load(model_pt_path, map_location=map_location, weights_only=True)
            model.load_state_dict(state_dict)
        return model

    def preprocess(self, data: Any) -> Any:
        return torch.as_tensor(data, device=self.device)

    def inference(self, data: Any, *args: Any, **kwargs: Any) -> Any:
        with torch.inference_mode():
            marshalled_data = data.to(self.device)
            return self.model(marshalled_data, *args, **kwargs)

    def postprocess(self, data: Any) -> Any:
        return data.tolist()

    def handle(self, data: Any, context: Any) -> Any:
        """The entry point TorchServe calls with one batch: a list with one dict per request."""
        start_time = time.time()
        self.context = context
        data_preprocess = self.preprocess(data)
        output = self.inference(data_preprocess)
        output = self.postprocess(output)
        context.metrics.add_time("HandlerTime", round((time.time() - start_time) * 1000, 2), None, "ms")
        return output
