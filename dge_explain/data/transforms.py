"""Evaluation transforms: the standard ImageNet protocol (resize the short side
bicubically to size/crop_ratio, centre crop, normalise with ImageNet mean/std)."""
from __future__ import annotations

import torch
from PIL import Image
from torchvision.transforms import v2 as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def eval_transform(size: int = 224, crop_ratio: float = 0.875):
    """PIL image -> normalised float tensor [3, size, size]."""
    return T.Compose([
        T.ToImage(),
        T.Resize(int(round(size / crop_ratio)), interpolation=T.InterpolationMode.BICUBIC,
                 antialias=True),
        T.CenterCrop(size),
        T.ToDtype(torch.float32, scale=True),
        T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def load_rgb(path) -> Image.Image:
    """An image file as RGB; a clear error naming the file when it cannot be read."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read image {path}: {error}") from error
