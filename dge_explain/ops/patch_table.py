"""The patch table: which packed query row covers which tokens.

Sample b owns rows ``offsets[b] : offsets[b+1]``: its ``num_extra`` extra tokens
(cls, distillation), then its regions in raster order, each region contributing
k*k rows (its sub-patches in raster order) where k = split_sizes[gate index].
Note that this is not a global raster order of the mixed-grained grid.

Ragged borders: a token grid that is not a multiple of the region size S has a
last row (column) of regions cut short by the border; a row's patch then covers
[y0, min(y0 + step, H)) x [x0, min(x0 + step, W)) and such a region holds only
the ceil(h / step) x ceil(w / step) sub-patches that meet the grid (h x w: its
part of the grid).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PatchTable:
    rows: torch.Tensor          # [L, 4] int32: sample, y0, x0, step (extra e: y0 = -(e+1))
    region_start: torch.Tensor  # [B, Hr, Wr] int32: packed row of the region's first sub-patch
    region_k: torch.Tensor      # [B, Hr, Wr] int32: sub-patches per region side
    offsets: torch.Tensor       # [B+1] int64 on the device of the rows
    lengths: torch.Tensor       # [B] int64 on the host: rows per sample
    split_sizes: tuple[int, ...]
    region_size: int
    num_extra: int
    token_grid: tuple[int, int] | None = None   # (H, W) where not the region grid times S

    @property
    def batch(self) -> int:
        return self.region_k.shape[0]

    @property
    def grid(self) -> tuple[int, int]:
        """Token grid (H, W) of the block the table was routed for."""
        if self.token_grid is not None:
            return self.token_grid
        return self.region_k.shape[1] * self.region_size, self.region_k.shape[2] * self.region_size

    @property
    def tokens(self) -> int:
        """Tokens per sample, extra tokens included: N = E + H*W."""
        height, width = self.grid
        return self.num_extra + height * width

    @property
    def total(self) -> int:
        """Packed rows over the batch: L."""
        return self.rows.shape[0]

    @property
    def device(self) -> torch.device:
        return self.rows.device
