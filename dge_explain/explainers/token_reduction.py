"""Compute-allocation maps of the token-reduction peers (ToMe, EViT) on the same
dense ViT, to set beside DGE's gating maps:

* ``tome-size:L``: after block L of a ToMe pass, the number of patches merged
  into the token each pixel's patch belongs to (1: still its own token);
* ``evit-kept:L``: after block L of an EViT pass, 1 where the pixel's patch is
  still a token of its own, 0 where it has been fused (at L or earlier).

The setting is not an option: r (ToMe, the same at every block) or the keep rate
(EViT, at the paper's blocks 4, 7, 10 of 12, scaled to the model's depth) is
the one whose MACs at the images' size come nearest MAP_RATIO of the dense
model's, about the shipped DGE-DeiT-Ti's trained complexity ratio (0.59), so the
three methods spend the same compute.  Layers default to every block (ToMe) and
to EViT's fusing blocks.  Maps are on the token grid, carried to the input
resolution by nearest neighbours: each pixel takes its own token's value.
The model is patched only during the pass and is dense again after it.  A DGE
ViT's maps come from its dense twin (``to_dense``: the same weights, every region
finest), made when the explainer is, so that the router test can force the DGE
model's fine regions where ToMe or EViT would have spent their compute.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dge_explain.models.families import adapter_for, check_image_size
from dge_explain.models.vit import is_dge_vit, to_dense
from dge_explain.methods import resolve_layers
from dge_explain.models.peers import check_plain_vit, evit_for_ratio, paper_layers, reduced, tome_for_ratio

from .base import Explainer

METHODS = {
    "tome-size:LAYERS": {"title": "ToMe token size", "units": "patches", "scale": None, "passes": "forward",
                         "help": "ToMe's compute allocation: patches merged into each pixel's token after block L "
                                 "(r matched to 0.6 of the dense MACs; default: every block; plain and DGE ViTs only)"},
    "evit-kept:LAYERS": {"title": "EViT kept", "units": "kept", "scale": 1.0, "passes": "forward",
                         "help": "EViT's compute allocation: 1 where each pixel's token is kept after block L, 0 "
                                 "where fused (keep rate matched to 0.6 of the dense MACs; default: its fusing "
                                 "blocks; plain and DGE ViTs only)"},
}
MAP_RATIO = 0.6


class TokenReductionMaps(Explainer):
    def __init__(self, model: nn.Module, method: str, layers=None):
        if is_dge_vit(model):
            model = to_dense(model)
        check_plain_vit(model)
        self.model, self.method = model, method
        depth = len(model.blocks)
        default = range(1, depth + 1) if method == "tome-size" else paper_layers(depth)
        self.layers = resolve_layers(layers, depth, default)
        bad = [l for l in self.layers if not 1 <= l <= depth]
        if bad:
            raise ValueError(f"{method}: layers {bad} out of range: the model has blocks 1..{depth}")
        self.settings: dict[tuple[int, int], object] = {}

    def name(self, layer: int) -> str:
        return f"{self.method}-layer{layer}"

    def names(self) -> list[str]:
        return [self.name(l) for l in self.layers]

    def describe(self) -> dict[str, dict]:
        return {self.name(l): {"method": self.method, "layer": l, "macs_ratio": MAP_RATIO} for l in self.layers}

    def reduction(self, size: tuple[int, int]):
        """The method's setting for images of `size` (chosen once per size)."""
        if size not in self.settings:
            choose = tome_for_ratio if self.method == "tome-size" else evit_for_ratio
            self.settings[size] = choose(self.model, size, MAP_RATIO)[0]
        return self.settings[size]

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, ids=None, labels=None) -> dict[str, torch.Tensor]:
        size = tuple(int(s) for s in images.shape[-2:])
        check_image_size(self.model, size)
        was_training = self.model.training
        try:
            self.model.eval()
            with reduced(self.model, self.reduction(size), trace=self.layers) as run:
                self.model(images)
                traced = dict(run.traced)
        finally:
            self.model.train(was_training)
        _, grid, _ = adapter_for(self.model).last_tokens(self.model, size)
        return {self.name(l): F.interpolate(traced[l].reshape(-1, 1, *grid).float(), size=size,
                                            mode="nearest")[:, 0] for l in self.layers}


def build(model: nn.Module, requests: dict, seed: int) -> list:
    return [TokenReductionMaps(model, kind, layers) for kind, layers in requests.items()]
