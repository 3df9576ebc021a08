"""Deformable point attention (DPVT's "bilinear attention"): each query row
samples its own sample's value map at P points per head, bilinearly with zero
padding, and sums the samples with its weights.  Rows may be dense (every token
a query) or packed sparse queries of a PatchTable; ``patch_centres`` gives the
reference point of each packed row."""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from . import _backend, reference
from .checks import check_float, check_same, check_tensor, require, sample_offsets
from .patch_table import PatchTable


class _DeformableAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, value, locations, weights, offsets):
        ctx.save_for_backward(value, locations, weights, offsets)
        return _backend.kernels().deformable_attention_forward(value, locations, weights, offsets)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        value, locations, weights, offsets = ctx.saved_tensors
        grads = _backend.kernels().deformable_attention_backward(
            grad.contiguous(), value, locations, weights, offsets)
        return (*grads, None)


def deformable_attention(value: torch.Tensor, locations: torch.Tensor, weights: torch.Tensor,
                         offsets: torch.Tensor | PatchTable) -> torch.Tensor:
    """sum_p weights[l, h, p] * bilinear(value[b(l), :, :, h, :], locations[l, h, p]).

    value: [B, H, W, h, d] (e.g. a value projection [B, H*W, C] viewed so);
    locations: [L, h, P, 2], (x, y) in pixel-index coordinates of the H x W map
    (integer = pixel centre; points outside sample zeros, non-finite ones too);
    weights: [L, h, P]; offsets: [B+1] rows of each sample, or the PatchTable
    that packed the rows.  Returns [L, h, d]; differentiable in value, locations
    and weights.
    """
    check_tensor("value", value, 5, "[B, H, W, h, d]")
    check_tensor("locations", locations, 4, "[L, h, P, 2]")
    check_tensor("weights", weights, 3, "[L, h, P]")
    check_float("value", value)
    check_same("locations", locations, "value", value)
    check_same("weights", weights, "value", value)
    batch, _, _, heads, _ = value.shape
    require(locations.shape[1] == heads and locations.shape[3] == 2,
            lambda: f"locations {tuple(locations.shape)} must be [L, {heads}, P, 2] for value {tuple(value.shape)}")
    require(weights.shape == locations.shape[:3],
            lambda: f"weights {tuple(weights.shape)} must be {tuple(locations.shape[:3])} for locations "
                    f"{tuple(locations.shape)}")
    offsets, _ = sample_offsets(offsets, batch, locations.shape[0], value.device,
                                f"value {tuple(value.shape)} and locations {tuple(locations.shape)}")
    if not _backend.compiled_on(value.device):
        return reference.deformable_attention(value, locations, weights, offsets)
    value, locations, weights = (t.contiguous() for t in (value, locations, weights))
    if _backend.needs_grad(value, locations, weights):
        return _DeformableAttention.apply(value, locations, weights, offsets)
    return _backend.kernels().deformable_attention_forward(value, locations, weights, offsets)


def patch_centres(table: PatchTable, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """[L, 2]: the (x, y) token-grid centre of the patch each packed row stands for,
    x0 + (step - 1) / 2 (a fine row's own token; a coarse row's block middle; a
    patch cut by a ragged border: the middle of its part of the grid).
    The reference point of a compressed query, which no released code defines."""
    require(table.num_extra == 0, lambda: f"the table has {table.num_extra} extra-token rows, which cover no "
                                          "grid position")
    rows = table.rows.to(dtype)
    corner = torch.stack([rows[:, 2], rows[:, 1]], 1)
    extent = torch.tensor([table.grid[1], table.grid[0]], dtype=dtype, device=rows.device)
    side = torch.minimum(rows[:, 3:4], extent - corner)
    return corner + (side - 1) / 2


def grid_centres(height: int, width: int, step: int = 1, device=None,
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """[ceil(H/step) * ceil(W/step), 2]: the (x, y) centres of a step x step tiling
    of an H x W grid in raster order (step 1: every token's own position; a tile
    cut by the border: the middle of its part of the grid)."""
    def centres(extent):
        starts = torch.arange(0, extent, step, device=device, dtype=dtype)
        return starts + (torch.clamp(extent - starts, max=step) - 1) / 2

    ys, xs = centres(height), centres(width)
    return torch.stack([xs.expand(len(ys), -1), ys.unsqueeze(1).expand(-1, len(xs))], -1).reshape(-1, 2)
