"""TorchServe's `VisionHandler`: each request's image (bytes, base64 text or a nested list) -> one stacked tensor.

Subclasses set `image_processing` (a transform of a PIL image to a CHW tensor). Images are converted to RGB first
(TorchServe passes the decoded mode through, so a grey or palette PNG there reaches the model with the wrong
number of channels; here it is converted).
"""

from __future__ import annotations

import base64
import io
from typing import Any

import torch

from .base_handler import BaseHandler

__all__ = ["VisionHandler"]


class VisionHandler(BaseHandler):
    image_processing: Any = None

    def initialize(self, context: Any) -> None:
        super().initialize(context)
        self.initialized = True
        if not context.system_properties.get("limit_max_image_pixels"):
            from PIL import Image

            Image.MAX_IMAGE_PIXELS = None

    def preprocess(self, data: Any) -> torch.Tensor:
        images = []
        for row in data:
            image = row.get("data") or row.get("body")
            if isinstance(image, str):  # base64 text of the image
                image = base64.b64decode(image)
            if isinstance(image, (bytearray, bytes)):
                from PIL import Image

                picture = Image.open(io.BytesIO(image))
                tensor = self.image_processing(picture if picture.mode == "RGB" else picture.convert("RGB"))
            else:  # the image as a nested list of numbers
                tensor = torch.FloatTensor(image)
            images.append(tensor)
        return torch.stack(images).to(self.device)
