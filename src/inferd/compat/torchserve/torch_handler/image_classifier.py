"""TorchServe's `image_classifier` handler: resize 256, center-crop 224, ImageNet normalisation, softmax, top 5.

Each request answers a dict {label: probability} of its `topk` most probable classes (labels from the archive's
`index_to_name.json`, else the class index as a string). Unlike TorchServe, a model with fewer than `topk`
classes answers all of them instead of failing.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..utils.util import map_class_to_label
from .vision_handler import VisionHandler

try:
    from torchvision import transforms  # type: ignore[import-not-found, unused-ignore]
except ImportError:  # the same transforms with Pillow and numpy
    from .. import _transforms as transforms  # type: ignore[no-redef, unused-ignore]

__all__ = ["ImageClassifier"]


class ImageClassifier(VisionHandler):
    topk = 5
    image_processing = transforms.Compose([
        transforms.Resize(256),
        transforms.CenterCrop(224),
        transforms.ToTensor(),
        transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
    ])

    def set_max_result_classes(self, topk: int) -> None:
        self.topk = topk

    def get_max_result_classes(self) -> int:
        return self.topk

    def postprocess(self, data: Any) -> list[dict[str, float]]:
        ps = F.softmax(data, dim=1)
        probs, classes = torch.topk(ps, min(self.topk, ps.shape[1]), dim=1)
        return map_class_to_label(probs.tolist(), self.mapping, classes.tolist())
