"""The DGE block's fast paths for a batch whose regions all took one granularity.

With every region split the same way the packed queries are a regular grid:
compress is an average pool with a step x step window (step 1: the tokens
themselves), and restore a nearest-neighbour upsample of the update.  These
helpers compute exactly what compress / restore compute for such a table, in
global raster order instead of region-major order (attention, MLP and norms act
on each query alone, so the order of the queries changes no value), with a few
strided PyTorch ops and no patch table.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def grid_means(tokens: torch.Tensor, grid: tuple[int, int], step: int) -> torch.Tensor:
    """[B, ceil(H/step), ceil(W/step), C]: the mean of each step x step window of a
    token grid [B, H*W, C] (any batch stride, unit channel stride); a window cut by
    the grid's border averages the tokens it has.  avg_pool2d on the channels-last
    view of the tokens is one kernel with no copy: 8 us against 35 us for the sums
    of strided slices (a 14 x 14 x 192 grid, one thread)."""
    batch, _, channels = tokens.shape
    maps = tokens.reshape(batch, *grid, channels)
    if step == 1:
        return maps
    # ceil_mode with no padding divides a cut window by the tokens inside it
    return F.avg_pool2d(maps.permute(0, 3, 1, 2), step, ceil_mode=True).permute(0, 2, 3, 1)


def pooled_queries(x: torch.Tensor, grid: tuple[int, int], step: int, num_extra: int,
                   pooled: torch.Tensor | None = None) -> torch.Tensor:
    """[B, E + ceil(H/step) ceil(W/step), C]: the extra tokens, then the step x step
    window means of the grid in raster order.  `pooled` ([B, H/step, W/step, C])
    passes means already computed (the router's, when step is its region size)."""
    if pooled is None:
        pooled = grid_means(x[:, num_extra:], grid, step)
    return torch.cat([x[:, :num_extra], pooled.flatten(1, 2)], 1)


def pooled_restore(x: torch.Tensor, updated: torch.Tensor, queries: torch.Tensor,
                   grid: tuple[int, int], step: int, num_extra: int) -> torch.Tensor:
    """x + up(updated - queries): each token gets its window's update; extra tokens
    their own."""
    batch, _, channels = x.shape
    height, width = grid
    rows, columns = -(-height // step), -(-width // step)
    delta = updated - queries
    spatial = delta[:, num_extra:].reshape(batch, rows, 1, columns, 1, channels)
    ragged = height % step or width % step
    if ragged:   # the upsampled update cropped to the grid
        spatial = spatial.expand(batch, rows, step, columns, step, channels).reshape(
            batch, rows * step, columns * step, channels)[:, :height, :width]
    shape = (batch, height, width, channels) if ragged else (batch, rows, step, columns, step, channels)
    tokens = x[:, num_extra:].reshape(shape)
    if torch.is_grad_enabled() and any(t.requires_grad for t in (x, updated, queries)):
        # autograd records no op writing into an out= tensor: the same sums, out of place
        return torch.cat([x[:, :num_extra] + delta[:, :num_extra], (tokens + spatial).reshape(batch, -1, channels)], 1)
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    torch.add(x[:, :num_extra], delta[:, :num_extra], out=out[:, :num_extra])
    torch.add(tokens, spatial, out=out[:, num_extra:].view(shape))
    return out


def uniform_rows(grid: tuple[int, int], region_size: int, k: int) -> int:
    """Packed rows per sample (extra tokens aside) when every region is split k x k."""
    step = region_size // k
    return -(-grid[0] // step) * -(-grid[1] // step)


def region_rows(grid: tuple[int, int], region_size: int, split_sizes) -> torch.Tensor:
    """[Hr, Wr, K] (int64): packed rows of each region under each option k, k * k
    where the region is whole, ceil(h / step) * ceil(w / step) where a ragged border
    leaves it h x w tokens."""
    height, width = grid
    steps = torch.tensor([region_size // int(k) for k in split_sizes])
    sides = []
    for extent in (height, width):
        starts = torch.arange(0, extent, region_size)
        length = torch.clamp(extent - starts, max=region_size)
        sides.append(-(-length[:, None] // steps))                  # [regions along the side, K]
    return sides[0][:, None, :] * sides[1][None, :, :]
