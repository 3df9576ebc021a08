"""Gating maps: each DGE router's gating score as a soft segmentation.

Per layer (1-based block index, counted across all stages for PVT) and region,
from the router logits h (eval mode, no Gumbel noise), in float64 so that a
router whose logits vary gives a map that varies:

* ``fine``: p_finest = softmax(h)[finest option], the paper's "finer-grained
  gating score" (the default).  float32 rounds p_finest to exactly 1 once the
  finest logit leads the others by about 17; float64 resolves leads up to ~36;
* ``margin``: the log-odds of the finest option, log p_finest - log(1 - p_finest)
  (= h_fine - h_coarse for two options): monotone in p_finest, never saturates;
* ``density``: the expected query density sum_i p_i k_i^2 / S^2 (for |Phi| > 2).

The region map is upsampled bilinearly to the input size.  One forward pass
gives every layer, read by forward hooks on the routers: the model is not
modified.  Called on its own, the pass stops at the last chosen router: nothing
after it shapes a map (for layers 1, 4, 8, 12 of a 12-block DeiT that saves
block 12 and the head).
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from dge_explain.methods import resolve_layers
from dge_explain.models import dge_modules
from dge_explain.models.families import check_image_size

from .base import Explainer

SCORES = ("fine", "margin", "density")

METHODS = {
    "gating:LAYERS": {"title": "Gating (p_fine)", "units": "p_fine", "scale": 1.0, "passes": "rides",
                      "help": "the finer-grained gating score p_fine of each DGE layer (default: the recommended map, "
                              "layer 9 of 12, or the same relative depth; all: every layer)"},
    "gating-margin:LAYERS": {"title": "Gating (margin)", "units": "logits", "scale": 1.0, "passes": "rides",
                             "help": "the log-odds of the finest option (never saturates; default layer as gating)"},
    "gating-density:LAYERS": {"title": "Gating (density)", "units": "density", "scale": 1.0, "passes": "rides",
                              "help": "the expected query density sum_i p_i k_i^2 / S^2 (for |Phi| > 2; default layer as "
                                       "gating)"},
}


# The default gating map (a gating method named without layers), chosen on the development
# set alone (ECSSD's even half; docs/heldout.md): the shipped DGE-DeiT-Tiny's layer
# RECOMMENDED_LAYER of 12.  Other models take the DGE layer at the same relative depth.
RECOMMENDED_LAYER = 9


def recommended_layer(depth: int) -> int:
    """The default gating layer (1-based) of a model with `depth` DGE layers."""
    return min(depth, max(1, round(RECOMMENDED_LAYER * depth / 12)))


class _LastRouterSeen(Exception):
    """Ends a forward pass once every chosen router has run."""


def gating_score(logits: torch.Tensor, split_sizes, region_size: int, score: str) -> torch.Tensor:
    """[..., K] router logits -> [...] score in float64 (option 0 is the finest)."""
    log_p = logits.double().log_softmax(-1)
    if score == "fine":
        return log_p[..., 0].exp()
    if score == "margin":
        return log_p[..., 0] - torch.logsumexp(log_p[..., 1:], -1)
    weights = torch.tensor([k * k / region_size ** 2 for k in split_sizes], dtype=torch.float64,
                           device=logits.device)
    return (log_p.exp() * weights).sum(-1)


class GatingMaps(Explainer):
    rides_along = True

    def __init__(self, model: nn.Module, layers=None, score: str = "fine"):
        self.model = model
        self.dges = dge_modules(model)
        if not self.dges:
            raise ValueError(f"{type(model).__name__} has no DGE routers to read gating maps from")
        self.layers = resolve_layers(layers, len(self.dges), [recommended_layer(len(self.dges))])
        bad = [l for l in self.layers if not 1 <= l <= len(self.dges)]
        if bad:
            raise ValueError(f"layers {bad} out of range: the model has DGE layers 1..{len(self.dges)}")
        if score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}, got {score!r}")
        if score == "margin" and any(len(self.dges[l - 1].split_sizes) < 2 for l in self.layers):
            raise ValueError("the margin score needs at least two candidate granularities")
        self.score = score

    def name(self, layer: int) -> str:
        return f"layer{layer}" if self.score == "fine" else f"layer{layer}-{self.score}"

    def names(self) -> list[str]:
        return [self.name(l) for l in self.layers]

    def describe(self) -> dict[str, dict]:
        return {self.name(l): {"method": "gating", "layer": l, "score": self.score,
                               "phi": list(self.dges[l - 1].phi)} for l in self.layers}

    @contextmanager
    def capturing(self, stop: bool = False):
        """Records the router logits of the chosen layers during any forward pass run
        inside the block (so another explainer's forward can serve this one too);
        with stop, the pass ends with _LastRouterSeen once they are all recorded."""
        captured: dict[int, torch.Tensor] = {}

        def record(layer, logits):
            captured[layer] = logits.detach()
            if stop and len(captured) == len(self.layers):
                raise _LastRouterSeen

        handles = [self.dges[l - 1].router.register_forward_hook(
            lambda module, args, out, l=l: record(l, out)) for l in self.layers]
        try:
            yield captured
        finally:
            for handle in handles:
                handle.remove()

    def maps_from(self, captured: dict[int, torch.Tensor], size) -> dict[str, torch.Tensor]:
        """float64 maps at the input size [H, W] from the logits ``capturing`` recorded."""
        maps = {}
        for layer in self.layers:
            dge = self.dges[layer - 1]
            region = gating_score(captured[layer], dge.split_sizes, dge.region_size, self.score)
            maps[self.name(layer)] = F.interpolate(region[:, None], size=tuple(size), mode="bilinear",
                                                   align_corners=False)[:, 0]
        return maps

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, ids=None, labels=None) -> dict[str, torch.Tensor]:
        check_image_size(self.model, images.shape[-2:])
        was_training = self.model.training
        with self.capturing(stop=True) as captured:
            try:
                self.model.eval()
                self.model(images)
            except _LastRouterSeen:
                pass
            finally:
                self.model.train(was_training)
        return self.maps_from(captured, images.shape[-2:])


def build(model: nn.Module, requests: dict, seed: int) -> list:
    return [GatingMaps(model, layers, kind.partition("-")[2] or "fine") for kind, layers in requests.items()]
