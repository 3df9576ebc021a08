"""DPVT: PVT v1 with deformable point attention instead of spatial-reduction
attention (the DGE authors' baseline), dense or with a DGE in every block.

Each query predicts, per head, P sampling offsets (pixels of its stage's token
grid) and P softmax weights; its output is the weighted sum of the head's value
map sampled bilinearly (zero padding) at reference point + offset.  No cls token
(stage 4 has 64 positional entries at 256 px), no spatial reduction, and the
classifier reads the mean of the final tokens.  Parameter names as the authors'
implementation: ``attn.v``, ``attn.offsets``, ``attn.attn_weight``, ``attn.proj``.
The original sets the offsets to a per-head ray of points (zero weight) and then
re-initialises every Linear, offsets included (trunc-normal 0.02, bias 0): the
effective initial offsets are ~0, which the model's init_weights gives directly.

With a DGE, a query stands for a patch of the grid: its reference point is the
patch's centre (x0 + (step - 1)/2), which no released code defines (the authors
released DPVT, not DPVT+DGE).  Values always come from every token.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from dge_explain import ops

from .pvt import DEPTHS, PyramidVisionTransformer, register_pyramid

POINTS = 4
# The gradient into the sampling locations is scaled by this (the original's GradScale).
OFFSET_GRADIENT_SCALE = 0.1


class _ScaleGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, factor):
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.factor, None


class DeformablePointAttention(nn.Module):
    """Queries qn ([B, Lq, C] dense, or packed [L, C] with a PatchTable) attend to
    P points per head of the value map of the full input xn [B, H*W, C].

    Dense queries are every token (reference point = the token), or, when
    ``multigrain_steps`` is set (the DGE's dense training path), the grid
    average-pooled at each step in turn (reference point = the window centre)."""

    def __init__(self, dim: int, num_heads: int, points: int = POINTS, qkv_bias: bool = True,
                 proj_drop: float = 0.0, multigrain_steps: Optional[tuple[int, ...]] = None):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads, self.points = num_heads, points
        self.multigrain_steps = multigrain_steps
        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        self.offsets = nn.Linear(dim, num_heads * points * 2)
        self.attn_weight = nn.Linear(dim, num_heads * points)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def reference_points(self, grid: tuple[int, int], queries: int, table, device, dtype) -> torch.Tensor:
        """[Lq or L, 2]: the (x, y) reference point of every query.  Dense queries are
        told apart by their count: every token, the DGE's multi-granularity training
        queries (every step in turn), or the grid pooled at one step (the DGE's
        uniform fast path); no two of these counts agree."""
        if table is not None:
            return ops.patch_centres(table, dtype)
        height, width = grid
        steps = self.multigrain_steps or (1,)
        for candidate in (steps, *((step,) for step in steps if len(steps) > 1), (1,)):
            if sum(-(-height // step) * -(-width // step) for step in candidate) == queries:
                return torch.cat([ops.grid_centres(height, width, step, device, dtype) for step in candidate])
        raise ValueError(f"{queries} dense queries do not match the {height}x{width} grid at steps {steps}")

    def forward(self, qn: torch.Tensor, xn: torch.Tensor, grid: tuple[int, int],
                table: Optional[ops.PatchTable]) -> torch.Tensor:
        batch, tokens, channels = xn.shape
        height, width = grid
        if tokens != height * width:
            raise ValueError(f"deformable attention needs a pure {height}x{width} token grid, got {tokens} tokens")
        heads, points = self.num_heads, self.points
        value = self.v(xn).view(batch, height, width, heads, channels // heads)
        rows = qn if table is not None else qn.reshape(-1, channels)
        # dense rows: offsets built on the host, where the op checks them without a device sync
        offsets = table if table is not None else torch.arange(batch + 1) * qn.shape[1]
        reference = self.reference_points(grid, qn.shape[-2], table, qn.device, qn.dtype)
        if table is None:
            reference = reference.repeat(batch, 1)
        shift = _ScaleGradient.apply(self.offsets(rows).view(-1, heads, points, 2), OFFSET_GRADIENT_SCALE)
        locations = reference.view(-1, 1, 1, 2) + shift
        weights = self.attn_weight(rows).view(-1, heads, points).softmax(-1)
        out = ops.deformable_attention(value, locations, weights, offsets).reshape(rows.shape[0], channels)
        out = self.proj_drop(self.proj(out))
        return out if table is not None else out.view(qn.shape)


class DeformablePVT(PyramidVisionTransformer):
    num_extra = 0

    def __init__(self, *args, points: int = POINTS, **kwargs):
        self.points = points
        super().__init__(*args, **kwargs)

    def make_attention(self, dim, heads, sr_ratio, qkv_bias, attn_drop, proj_drop):
        steps = None if self.split_sizes is None else tuple(self.region_size // k for k in self.split_sizes)
        return DeformablePointAttention(dim, heads, self.points, qkv_bias, proj_drop, steps)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean(1)
        return x if pre_logits else self.head(x)


for _size in DEPTHS:
    register_pyramid(DeformablePVT, f"dpvt_{_size}_256", _size, None, "DPVT")
    register_pyramid(DeformablePVT, f"dpvt_dge_s12_{_size}_256", _size, (1, 2), "DPVT")
    register_pyramid(DeformablePVT, f"dpvt_dge_s124_{_size}_256", _size, (1, 2, 4), "DPVT")
