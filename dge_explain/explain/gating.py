"""Gating maps: each DGE router's finer-grained gating score as a soft segmentation.

Per layer (1-based block index, counted across all stages for PVT) the map is
softmax(router logits)[finest option] on the region grid (no Gumbel noise, eval
mode), upsampled bilinearly to the input size.  With more than two candidate
granularities the expected query density sum_i p_i k_i^2 / S^2 is available
too (score='density').  One forward pass gives every layer, read by forward
hooks on the routers: the model is not modified.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from dge_explain.models import dge_modules

SCORES = ("fine", "density")


class GatingMaps:
    def __init__(self, model: nn.Module, layers=None, score: str = "fine"):
        self.model = model
        self.dges = dge_modules(model)
        if not self.dges:
            raise ValueError(f"{type(model).__name__} has no DGE routers to read gating maps from")
        self.layers = tuple(range(1, len(self.dges) + 1)) if layers is None else tuple(int(l) for l in layers)
        bad = [l for l in self.layers if not 1 <= l <= len(self.dges)]
        if bad:
            raise ValueError(f"layers {bad} out of range: the model has DGE layers 1..{len(self.dges)}")
        if score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}, got {score!r}")
        self.score = score

    def names(self) -> list[str]:
        return [f"layer{l}" for l in self.layers]

    def _score(self, logits: torch.Tensor, dge) -> torch.Tensor:
        probabilities = logits.float().softmax(-1)
        if self.score == "fine":
            return probabilities[..., 0]
        weights = torch.tensor([k * k / dge.region_size ** 2 for k in dge.split_sizes],
                               device=logits.device)
        return (probabilities * weights).sum(-1)

    @contextmanager
    def capturing(self):
        """Records the router logits of the chosen layers during any forward pass run
        inside the block (so another explainer's forward can serve this one too)."""
        captured: dict[int, torch.Tensor] = {}
        handles = [self.dges[l - 1].router.register_forward_hook(
            lambda module, args, out, l=l: captured.__setitem__(l, out.detach())) for l in self.layers]
        try:
            yield captured
        finally:
            for handle in handles:
                handle.remove()

    def maps_from(self, captured: dict[int, torch.Tensor], size) -> dict[str, torch.Tensor]:
        """Maps at the input size [H, W] from the logits ``capturing`` recorded."""
        maps = {}
        for layer in self.layers:
            region = self._score(captured[layer], self.dges[layer - 1])   # [B, Hr, Wr]
            maps[f"layer{layer}"] = F.interpolate(region[:, None], size=tuple(size), mode="bilinear",
                                                  align_corners=False)[:, 0]
        return maps

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, indices=None) -> dict[str, torch.Tensor]:
        was_training = self.model.training
        with self.capturing() as captured:
            try:
                self.model.eval()
                self.model(images)
            finally:
                self.model.train(was_training)
        return self.maps_from(captured, images.shape[-2:])
