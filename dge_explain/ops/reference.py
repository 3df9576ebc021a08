"""Pure-PyTorch reference of every DGE op: the test oracle, and the (slow)
fallback when the extension is missing.  Written for clarity, from the
definitions, independently of the kernels; gradients come from autograd.
"""
from __future__ import annotations

import torch

from .patch_table import PatchTable


def _exclusive_cumsum(values: torch.Tensor) -> torch.Tensor:
    return torch.cumsum(values, 0) - values


def _clipped(starts: torch.Tensor, length: torch.Tensor, end: int) -> torch.Tensor:
    """How much of [start, start + length) lies before `end`."""
    return torch.minimum(length, end - starts)


def route_fields(indices: torch.Tensor, split_sizes: tuple[int, ...], region_size: int,
                 num_extra: int, grid: tuple[int, int] | None = None):
    """(rows, region_start, region_k, offsets, lengths) as the compiled op returns them,
    for a token grid (H, W) (default: the region grid times S; else ragged borders:
    a region cut by the border keeps the sub-patches that meet the grid)."""
    batch, region_h, region_w = indices.shape
    height, width = grid if grid is not None else (region_h * region_size, region_w * region_size)
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= len(split_sizes)):
        bad = ((indices < 0) | (indices >= len(split_sizes))).nonzero()[0].tolist()
        raise ValueError(
            f"indices{list(indices.shape)} holds gate index {int(indices[tuple(bad)])} at sample "
            f"{bad[0]}, region ({bad[1]}, {bad[2]}); valid indices are 0..{len(split_sizes) - 1}")
    device = indices.device
    k = torch.tensor(split_sizes, device=device)[indices]                 # [B, Hr, Wr]
    step = region_size // k
    ry = torch.arange(region_h, device=device).view(1, -1, 1) * region_size
    rx = torch.arange(region_w, device=device).view(1, 1, -1) * region_size
    # sub-patches per region side that meet the grid (k, unless the border cuts the region)
    k_y = -(-_clipped(ry, torch.tensor(region_size, device=device), height) // step)
    k_x = -(-_clipped(rx, torch.tensor(region_size, device=device), width) // step)
    counts = (k_y * k_x).flatten()                                        # per region, batch-major
    lengths = num_extra + (k_y * k_x).flatten(1).sum(1)                   # [B]
    offsets = torch.cat([lengths.new_zeros(1), torch.cumsum(lengths, 0)])
    sample_of_region = torch.arange(batch, device=device).repeat_interleave(region_h * region_w)
    # Regions of one sample follow its extra rows, packed in raster order.
    start_in_sample = _exclusive_cumsum(counts) - _exclusive_cumsum(lengths - num_extra)[
        sample_of_region]
    region_start = offsets[:-1][sample_of_region] + num_extra + start_in_sample

    total = int(offsets[-1])
    rows = torch.full((total, 4), -(2 ** 30), dtype=torch.int32, device=device)
    extra = torch.arange(num_extra, device=device)
    for b in range(batch):
        rows[offsets[b] + extra] = torch.stack(
            [torch.full_like(extra, b), -(extra + 1), torch.zeros_like(extra),
             torch.ones_like(extra)], 1).int()
    region = torch.arange(batch * region_h * region_w, device=device).repeat_interleave(counts)
    sub = torch.arange(len(region), device=device) - _exclusive_cumsum(counts).repeat_interleave(counts)
    kx_row = k_x.expand_as(k).flatten()[region]
    step_row = step.flatten()[region]
    y_of = (region // region_w) % region_h
    x_of = region % region_w
    rows[region_start[region] + sub] = torch.stack(
        [sample_of_region[region], y_of * region_size + (sub // kx_row) * step_row,
         x_of * region_size + (sub % kx_row) * step_row, step_row], 1).int()
    shape = (batch, region_h, region_w)
    return (rows, region_start.view(shape).int(), k.view(shape).int(), offsets,
            lengths.cpu())


def token_rows(table: "PatchTable") -> tuple[torch.Tensor, torch.Tensor]:
    """For every token, the packed row covering it ([B, N] long), and each row's area
    (its patch clipped to the grid)."""
    rows = table.rows.long()
    sample, y0, x0, step = rows.unbind(1)
    height, width = table.grid
    extra = y0 < 0
    patch_h = torch.where(extra, 1, _clipped(y0, step, height))
    patch_w = torch.where(extra, 1, _clipped(x0, step, width))
    area = patch_h * patch_w
    row = torch.arange(len(rows), device=rows.device).repeat_interleave(area)
    within = torch.arange(len(row), device=rows.device) - _exclusive_cumsum(area).repeat_interleave(area)
    width_r = patch_w[row]
    spatial = table.num_extra + (y0[row] + within // width_r) * width + x0[row] + within % width_r
    token = torch.where(y0[row] < 0, -y0[row] - 1, spatial)
    covering = torch.full((table.batch, table.tokens), -1, dtype=torch.long, device=rows.device)
    covering[sample[row], token] = row
    if len(row) != covering.numel() or bool((covering < 0).any()):
        raise AssertionError("patch table does not partition the tokens")
    return covering, area


def compress(x: torch.Tensor, table: "PatchTable") -> torch.Tensor:
    """[L, C]: mean of the tokens of each patch; extra tokens copied."""
    covering, area = token_rows(table)
    summed = x.new_zeros(table.total, x.shape[-1]).index_add(0, covering.flatten(), x.flatten(0, 1))
    return summed / area.unsqueeze(1).to(x.dtype)


def decompress(delta: torch.Tensor, table: "PatchTable", reference: torch.Tensor | None = None,
               add_reference: bool = True) -> torch.Tensor:
    """[B, N, C]: every token takes the row covering it, plus its reference value."""
    covering, _ = token_rows(table)
    out = delta[covering]
    return out + reference if (reference is not None and add_reference) else out


def restore(x: torch.Tensor, q2: torch.Tensor, comp: torch.Tensor, table: "PatchTable") -> torch.Tensor:
    """x + up(q2 - comp): the DGE residual restore."""
    return decompress(q2 - comp, table, x, True)


def varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, offsets: torch.Tensor,
                     scale: float) -> torch.Tensor:
    """[L, h, d]: per sample b, softmax(scale q_b k_b^T) v_b."""
    bounds = offsets.tolist()
    outs = [q[:0] * 0]                  # B = 0 gives [0, h, d], still in q's graph
    for b in range(k.shape[0]):
        q_b = q[bounds[b]:bounds[b + 1]].transpose(0, 1)                 # [h, m, d]
        probs = torch.softmax(scale * q_b @ k[b].transpose(-1, -2), dim=-1)
        outs.append((probs @ v[b]).transpose(0, 1))
    return torch.cat(outs, 0)


def multigrain_compress(x: torch.Tensor, split_sizes, region_size: int, num_extra: int,
                        grid: tuple[int, int]) -> torch.Tensor:
    """[B, Lq, C]: extra tokens, then each granularity's full grid in global raster order."""
    batch = x.shape[0]
    region_h, region_w = grid[0] // region_size, grid[1] // region_size
    parts = [x[:, :num_extra]]
    for option, k in enumerate(split_sizes):
        uniform = torch.full((batch, region_h, region_w), option, dtype=torch.long, device=x.device)
        table = reference_table(uniform, split_sizes, region_size, num_extra)
        packed = compress(x, table).view(batch, -1, x.shape[-1])[:, num_extra:]
        parts.append(packed[:, _region_major_to_raster(table)])
    return torch.cat(parts, 1)


def multigrain_restore(x: torch.Tensor, delta: torch.Tensor, gates: torch.Tensor, split_sizes,
                       region_size: int, num_extra: int, grid: tuple[int, int]) -> torch.Tensor:
    """x + sum_i gate_i * up(delta_i) on spatial tokens; x + delta on extra tokens."""
    batch, channels = x.shape[0], x.shape[-1]
    region_h, region_w = grid[0] // region_size, grid[1] // region_size
    out = x.clone()
    out[:, :num_extra] = x[:, :num_extra] + delta[:, :num_extra]
    start = num_extra
    for option, k in enumerate(split_sizes):
        uniform = torch.full((batch, region_h, region_w), option, dtype=torch.long, device=x.device)
        table = reference_table(uniform, split_sizes, region_size, num_extra)
        count = region_h * region_w * k * k
        raster = delta[:, start:start + count]
        start += count
        packed = torch.empty_like(raster)
        packed[:, _region_major_to_raster(table)] = raster
        packed = torch.cat([torch.zeros_like(delta[:, :num_extra]), packed], 1)
        up = decompress(packed.reshape(-1, channels), table)[:, num_extra:]
        gate = gates[..., option].repeat_interleave(region_size, 1).repeat_interleave(region_size, 2)
        out[:, num_extra:] = out[:, num_extra:] + gate.flatten(1).unsqueeze(-1) * up
    return out


def reference_table(indices: torch.Tensor, split_sizes, region_size: int,
                    num_extra: int, grid: tuple[int, int] | None = None) -> "PatchTable":
    """A PatchTable routed by the reference, whatever backend is active."""
    splits = tuple(int(k) for k in split_sizes)
    fields = route_fields(indices.long(), splits, region_size, num_extra, grid)
    full = (indices.shape[1] * region_size, indices.shape[2] * region_size)
    return PatchTable(*fields, split_sizes=splits, region_size=region_size, num_extra=num_extra,
                      token_grid=None if grid is None or tuple(grid) == full else tuple(grid))


def _region_major_to_raster(table: "PatchTable") -> torch.Tensor:
    """Permutation taking sample 0's region-major spatial rows to global raster order."""
    rows = table.rows[: int(table.lengths[0])][table.num_extra:].long()
    step = rows[:, 3]
    width = table.grid[1] // step[0]
    raster = (rows[:, 1] // step) * width + rows[:, 2] // step
    return torch.argsort(raster)


def segmentation_scores(maps: torch.Tensor, masks: torch.Tensor, bins: int):
    """(counts [M, 3], ap [M], histograms [M, 2, bins]) as the compiled scorer
    returns them: the soft-segmentation protocol of Chefer et al. per map
    (``dge_explain.evaluation.metrics`` describes it), written step by step."""
    import numpy as np

    counts, aps, histograms = [], [], []
    for saliency, mask in zip(maps, masks):
        y = mask.numpy().ravel()
        r = (saliency - saliency.min()) / (saliency.max() - saliency.min())   # the map's dtype
        r = r.numpy().ravel()
        mean = np.cumsum(r.astype(np.float64))[-1] / r.size   # float64, summed in pixel order
        with np.errstate(invalid="ignore"):
            foreground = r.astype(np.float64) > mean
        score = np.where(np.isnan(r), 0, r).astype(r.dtype)
        inverse = np.where(np.isnan(r), 0, 1 - r).astype(r.dtype)
        counts.append([int((foreground & y).sum()), int(foreground.sum()), int(y.sum())])
        aps.append(_average_precision(np.concatenate([inverse, score]), np.concatenate([~y, y])))
        index = np.minimum((score * r.dtype.type(bins)).astype(np.int64), bins - 1)
        histograms.append([np.bincount(index[y], minlength=bins), np.bincount(index[~y], minlength=bins)])
    return (torch.tensor(counts, dtype=torch.long).view(-1, 3), torch.tensor(aps, dtype=torch.float64),
            torch.tensor(np.array(histograms), dtype=torch.long).view(-1, 2, bins))


def _average_precision(scores, labels) -> float:
    """scikit-learn's average_precision_score: sum over the distinct scores t, from
    the highest down, of (recall step at t) * precision(t), where precision counts
    every entry scoring at least t."""
    import numpy as np

    order = np.argsort(-scores, kind="stable")
    scores, labels = scores[order], labels[order]
    last_of_tie = np.append(scores[1:] != scores[:-1], True)
    true_positives = np.cumsum(labels)[last_of_tie]
    entries = np.flatnonzero(last_of_tie) + 1
    recall_step = np.diff(true_positives, prepend=0) / max(int(labels.sum()), 1)
    return float((recall_step * true_positives / entries).sum())


def deformable_attention(value: torch.Tensor, locations: torch.Tensor, weights: torch.Tensor,
                         offsets: torch.Tensor) -> torch.Tensor:
    """[L, h, d]: per row l of sample b and head h, sum_p weights[l, h, p] *
    bilinear(value[b, :, :, h], locations[l, h, p]), zero outside the map, through
    grid_sample (align_corners=False maps pixel index x to (2x + 1) / W - 1)."""
    import torch.nn.functional as F

    _, height, width, heads, dim = value.shape
    bounds = offsets.tolist()
    outs = [locations.new_zeros(0, heads, dim) + value.sum() * 0]   # in value's graph when empty
    scale = torch.tensor([2.0 / width, 2.0 / height], dtype=value.dtype, device=value.device)
    for b in range(value.shape[0]):
        rows = slice(bounds[b], bounds[b + 1])
        loc = locations[rows].nan_to_num(nan=-2.0, posinf=-2.0, neginf=-2.0)   # non-finite: outside
        grid = ((loc + 0.5) * scale - 1).transpose(0, 1)                     # [h, Lb, P, 2]
        maps = value[b].permute(2, 3, 0, 1)                                  # [h, d, H, W]
        sampled = F.grid_sample(maps, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        outs.append((sampled * weights[rows].transpose(0, 1).unsqueeze(1)).sum(-1).permute(2, 0, 1))
    return torch.cat(outs, 0)
