"""Routing: per-region gate indices to the patch table (dge_explain/ops/patch_table.py),
on the compiled kernels or the reference."""
from __future__ import annotations

import torch

from . import _backend, reference
from .checks import check_split_sizes, check_tensor, region_grid, require
from .patch_table import PatchTable


def route_to_patches(indices: torch.Tensor, split_sizes, region_size: int | None = None,
                     num_extra: int = 0, grid: tuple[int, int] | None = None) -> PatchTable:
    """Patch table for per-region gate indices [B, Hr, Wr] (index i picks split_sizes[i])
    over a token grid (H, W): by default Hr*S x Wr*S; a grid that is not a multiple
    of S has ragged borders (Hr = ceil(H / S), its last regions cut short)."""
    check_tensor("indices", indices, 3, "[B, Hr, Wr]")
    require(not indices.is_floating_point() and not indices.is_complex()
            and indices.dtype != torch.bool,
            lambda: f"indices must hold integer gate indices, got dtype {indices.dtype}")
    splits, size = check_split_sizes(split_sizes, region_size)
    require(int(num_extra) >= 0, lambda: f"num_extra must be >= 0, got {num_extra}")
    if grid is None:
        grid = (indices.shape[1] * size, indices.shape[2] * size)
    grid = (int(grid[0]), int(grid[1]))
    require(region_grid(grid, size, ragged=True) == tuple(indices.shape[1:]),
            lambda: f"indices {list(indices.shape)} do not tile the token grid {grid[0]}x{grid[1]} in "
                    f"regions of {size}: expected [B, {-(-grid[0] // size)}, {-(-grid[1] // size)}]")
    indices = indices.long()
    if _backend.compiled_on(indices.device):
        fields = _backend.kernels().route_to_patches(indices, list(splits), size, int(num_extra), *grid)
    else:
        fields = reference.route_fields(indices, splits, size, int(num_extra), grid)
    ragged = grid != (indices.shape[1] * size, indices.shape[2] * size)
    return PatchTable(*fields, split_sizes=splits, region_size=size, num_extra=int(num_extra),
                      token_grid=grid if ragged else None)
