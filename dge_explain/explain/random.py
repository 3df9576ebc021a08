"""The random baseline: a uniform map per image, seeded by the image's dataset
index, so that it does not depend on batching or on the process split."""
from __future__ import annotations

import torch


class RandomMaps:
    def __init__(self, seed: int = 0):
        self.seed = seed

    def names(self) -> list[str]:
        return ["random"]

    def __call__(self, images: torch.Tensor, indices) -> dict[str, torch.Tensor]:
        height, width = images.shape[-2:]
        maps = [torch.rand(height, width, generator=torch.Generator().manual_seed(
            self.seed * 1_000_003 + int(index))) for index in indices]
        return {"random": torch.stack(maps).to(images.device)}
