"""The torchvision transforms TorchServe's image classifier uses, done with Pillow and numpy.

Used only when torchvision is not installed; with it, the handlers use torchvision's own. Each one computes what
torchvision computes for a PIL image: `Resize(int)` scales the shorter side to that size (bilinear, keeping the
aspect ratio, long side truncated as torchvision does), `CenterCrop` takes the middle (padding with black when the
image is smaller), `ToTensor` gives a float CHW tensor in [0, 1], `Normalize` subtracts the mean and divides by the
standard deviation per channel.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["CenterCrop", "Compose", "Normalize", "Resize", "ToTensor"]


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    """(height, width) of a size given as one int (square) or as (h, w)."""
    if isinstance(size, int):
        return size, size
    values = list(size)
    return (values[0], values[0]) if len(values) == 1 else (values[0], values[1])


class Compose:
    def __init__(self, transforms: Sequence[Callable[[Any], Any]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: Any) -> Any:
        for transform in self.transforms:
            image = transform(image)
        return image


class Resize:
    def __init__(self, size: int | Sequence[int]) -> None:
        self.size = size

    def __call__(self, image: Any) -> Any:
        from PIL import Image

        width, height = image.size
        if isinstance(self.size, int) or len(self.size) == 1:
            target = self.size if isinstance(self.size, int) else self.size[0]
            short, long = (width, height) if width <= height else (height, width)
            if short == target:
                return image
            new_short, new_long = target, int(target * long / short)
            new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
        else:
            new_h, new_w = _pair(self.size)
        return image.resize((new_w, new_h), Image.Resampling.BILINEAR)


class CenterCrop:
    def __init__(self, size: int | Sequence[int]) -> None:
        self.size = _pair(size)

    def __call__(self, image: Any) -> Any:
        from PIL import Image

        crop_h, crop_w = self.size
        width, height = image.size
        if crop_w > width or crop_h > height:  # as torchvision: pad with zeros around the image first
            padded = Image.new(image.mode, (max(width, crop_w), max(height, crop_h)))
            padded.paste(image, ((max(width, crop_w) - width) // 2, (max(height, crop_h) - height) // 2))
            image = padded
            width, height = image.size
        top = round((height - crop_h) / 2.0)
        left = round((width - crop_w) / 2.0)
        return image.crop((left, top, left + crop_w, top + crop_h))


class ToTensor:
    def __call__(self, image: Any) -> torch.Tensor:
        array = np.asarray(image)
        if array.ndim == 2:
            array = array[:, :, None]
        tensor = torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))
        if tensor.dtype == torch.uint8:
            return tensor.to(torch.float32).div(255)
        return tensor.to(torch.float32)


class Normalize:
    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = torch.tensor(list(mean), dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(list(std), dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        return (tensor - self.mean) / self.std
