"""The patch table: which packed query row covers which tokens.

Sample b owns rows ``offsets[b] : offsets[b+1]``: its ``num_extra`` extra tokens
(cls, distillation), then its regions in raster order, each region contributing
k*k rows (its sub-patches in raster order) where k = split_sizes[gate index].
Note that this is not a global raster order of the mixed-grained grid.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from . import _backend, reference
from .checks import check_split_sizes, check_tensor, require


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

    @property
    def batch(self) -> int:
        return self.region_k.shape[0]

    @property
    def grid(self) -> tuple[int, int]:
        """Token grid (H, W) of the block the table was routed for."""
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


def route_to_patches(indices: torch.Tensor, split_sizes, region_size: int | None = None,
                     num_extra: int = 0) -> PatchTable:
    """Patch table for per-region gate indices [B, Hr, Wr] (index i picks split_sizes[i])."""
    check_tensor("indices", indices, 3, "[B, Hr, Wr]")
    require(not indices.is_floating_point() and not indices.is_complex()
            and indices.dtype != torch.bool,
            lambda: f"indices must hold integer gate indices, got dtype {indices.dtype}")
    splits, size = check_split_sizes(split_sizes, region_size)
    require(int(num_extra) >= 0, lambda: f"num_extra must be >= 0, got {num_extra}")
    indices = indices.long()
    if _backend.compiled_on(indices.device):
        fields = _backend.kernels().route_to_patches(indices, list(splits), size, int(num_extra))
    else:
        fields = reference.route_fields(indices, splits, size, int(num_extra))
    return PatchTable(*fields, split_sizes=splits, region_size=size, num_extra=int(num_extra))
