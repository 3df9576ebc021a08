"""The random baseline: a uniform map per image, seeded by the image's identity
(its dataset key), so that it depends neither on batching, nor on the process
split, nor on which other images the folder holds."""
from __future__ import annotations

import zlib

import torch

from .base import Explainer


METHODS = {"random": {"title": "Random", "units": "uniform", "scale": 1.0, "passes": "none",
                      "help": "uniform noise per pixel, seeded by the image's identity"}}


class RandomMaps(Explainer):

    def __init__(self, seed: int = 0):
        self.seed = seed

    def names(self) -> list[str]:
        return ["random"]

    def describe(self) -> dict[str, dict]:
        return {"random": {"method": "random", "seed": self.seed}}

    def __call__(self, images: torch.Tensor, ids, labels=None) -> dict[str, torch.Tensor]:
        height, width = images.shape[-2:]
        maps = [torch.rand(height, width, generator=torch.Generator().manual_seed(
            self.seed * 1_000_003 + zlib.crc32(str(image_id).encode()))) for image_id in ids]
        return {"random": torch.stack(maps).to(images.device)}


def build(model, requests: dict, seed: int) -> list:
    return [RandomMaps(seed)]
