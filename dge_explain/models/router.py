"""The dynamic router: average-pool each S x S region of the block input (before
any normalisation), then a linear gate gives one logit per candidate granularity."""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.init import trunc_normal_

from dge_explain.ops import region_grid
from dge_explain.ops.uniform import grid_means


def finest_bias(options: int, init_gate: float) -> float:
    """b with softmax([b, -b, ..., -b])[0] = init_gate: the router starts (almost) dense."""
    if options == 1:
        return 0.0
    if not 0.0 < init_gate < 1.0:
        raise ValueError(f"init_gate must be in (0, 1), got {init_gate}")
    return 0.5 * math.log(init_gate * (options - 1) / (1.0 - init_gate))


class DynamicRouter(nn.Module):
    """logits [B, Hr, Wr, K] for a block input x [B, E + H*W, C]."""

    def __init__(self, dim: int, options: int, region_size: int, init_gate: float = 0.95):
        super().__init__()
        self.region_size = region_size
        self.init_gate = init_gate
        self.gate = nn.Linear(dim, options)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        trunc_normal_(self.gate.weight, std=0.01, a=-2.0, b=2.0)
        bias = finest_bias(self.gate.out_features, self.init_gate)
        with torch.no_grad():
            self.gate.bias.fill_(-bias)
            self.gate.bias[0] = bias

    def pool(self, x: torch.Tensor, grid: tuple[int, int], num_extra: int, ragged: bool = False) -> torch.Tensor:
        """Mean of each region's tokens: [B, Hr, Wr, C] (ragged: a region cut by the
        grid's border averages the tokens it has)."""
        region_grid(grid, self.region_size, ragged)
        return grid_means(x[:, num_extra:], grid, self.region_size)

    def forward(self, x: torch.Tensor, grid: tuple[int, int], num_extra: int,
                pooled: torch.Tensor | None = None) -> torch.Tensor:
        """pooled: the region means pool() gave for this x, when the caller keeps them
        (the DGE reuses them as the queries of a uniformly coarsest batch)."""
        return self.gate(self.pool(x, grid, num_extra) if pooled is None else pooled)
