"""The soft-segmentation scorer: every map of a batch scored against its mask
in one compiled call (``dge_explain.evaluation.metrics`` states the protocol)."""
from __future__ import annotations

import torch

from . import _backend
from . import reference as oracle
from .checks import check_tensor, require


def segmentation_scores(maps: torch.Tensor, masks: torch.Tensor, bins: int):
    """maps [M, H, W] (float32 or float64, scored in their own precision), masks
    [M, H, W] (bool) -> counts [M, 3] int64 (predicted foreground on mask
    foreground, predicted foreground, mask foreground), ap [M] float64 and
    histograms [M, 2, bins] int64 of the foreground score over the mask's
    foreground (row 0) and background (row 1).  Runs on the CPU."""
    check_tensor("maps", maps, 3, "[M, H, W]")
    check_tensor("masks", masks, 3, "[M, H, W]")
    require(maps.dtype in (torch.float32, torch.float64),
            lambda: f"maps must be float32 or float64, got {maps.dtype}")
    require(masks.shape == maps.shape, lambda: f"masks {tuple(masks.shape)} and maps "
                                               f"{tuple(maps.shape)} differ in shape")
    require(maps.shape[1] * maps.shape[2] > 0, lambda: f"maps have no pixels: {tuple(maps.shape)}")
    require(bins >= 1, lambda: f"bins must be >= 1, got {bins}")
    maps, masks = maps.detach().cpu(), masks.detach().cpu().bool()
    if _backend.compiled_on(maps.device):
        return torch.ops.dge_explain.segmentation_scores(maps.contiguous(), masks.contiguous(), bins)
    return oracle.segmentation_scores(maps, masks, bins)
