"""Compare every op of the active backend with its reference on fresh random
inputs: forward outputs and input gradients.  Used by ``dge-explain info`` and by
the tests (which sweep many more shapes)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from . import reference
from .attention import varlen_attention
from .deformable import deformable_attention
from .multigrain import multigrain_compress, multigrain_restore
from .pooling import compress, decompress, restore
from .scoring import segmentation_scores
from .patch_table import PatchTable
from .table import route_to_patches

# Max error allowed against a float64 reference, relative to max(1, max |reference|).
TOLERANCE = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 2e-2, torch.bfloat16: 1e-1}


@dataclass(frozen=True)
class Case:
    """One random problem: gates, a table and dense tokens."""
    indices: torch.Tensor
    table: PatchTable
    x: torch.Tensor
    split_sizes: tuple[int, ...]
    region_size: int
    num_extra: int


@dataclass(frozen=True)
class CheckResult:
    op: str
    device: str
    dtype: str
    max_error: float
    tolerance: float

    @property
    def passed(self) -> bool:
        return self.max_error <= self.tolerance


def random_case(batch: int, region_grid: tuple[int, int], split_sizes, num_extra: int,
                channels: int, dtype: torch.dtype, device, generator: torch.Generator,
                grid: tuple[int, int] | None = None) -> Case:
    """Random gate indices over the region grid and N(0, 1) tokens; `grid`: a token
    grid with ragged borders (default: the region grid times S)."""
    splits = tuple(split_sizes)
    size = max(splits)
    grid = grid or (region_grid[0] * size, region_grid[1] * size)
    indices = torch.randint(0, len(splits), (batch, *region_grid), generator=generator)
    tokens = num_extra + grid[0] * grid[1]
    x = torch.randn(batch, tokens, channels, generator=generator, dtype=torch.float64)
    indices, x = indices.to(device), x.to(device=device, dtype=dtype)
    table = route_to_patches(indices, splits, size, num_extra, grid)
    return Case(indices, table, x, splits, size, num_extra)


def max_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Max abs difference, relative to the reference's scale when that exceeds 1."""
    if actual.shape != expected.shape:
        return float("inf")
    if actual.numel() == 0:
        return 0.0
    expected = expected.double()
    scale = max(1.0, float(expected.abs().max()))
    return float((actual.double() - expected).abs().max()) / scale


def off_grid_points(rows: int, heads: int, points: int, map_hw: tuple[int, int], margin: float,
                    generator: torch.Generator) -> torch.Tensor:
    """Random (x, y) sampling locations [rows, heads, points, 2] up to `margin`
    pixels beyond an H x W map, at least 0.2 px from the integer lines (bilinear
    sampling has kinks there, where the kernel's and grid_sample's one-sided
    derivatives differ; 0.2 px survives rounding to bfloat16)."""
    span = torch.tensor([map_hw[1] + 2 * margin, map_hw[0] + 2 * margin], dtype=torch.float64)
    locations = torch.rand(rows, heads, points, 2, generator=generator, dtype=torch.float64) * span - margin
    whole = locations.floor()
    return whole + (locations - whole).clamp(0.2, 0.8)


def _grads(fn, inputs):
    inputs = [t.detach().clone().requires_grad_(True) for t in inputs]
    out = fn(*inputs)
    weight = torch.linspace(-1, 1, out.numel(), dtype=out.dtype, device=out.device).view_as(out)
    (out * weight).sum().backward()
    return out.detach(), [t.grad for t in inputs]


def _compare(name, device, dtype, fn, ref_fn, inputs, tolerance) -> list[CheckResult]:
    """Forward and input-gradient errors of fn against ref_fn (run in float64)."""
    out, grads = _grads(fn, inputs)
    ref_out, ref_grads = _grads(ref_fn, [t.double() for t in inputs])
    results = [CheckResult(name, device, dtype, max_error(out, ref_out), tolerance)]
    grad_error = max(max_error(g, r) for g, r in zip(grads, ref_grads))
    results.append(CheckResult(f"{name} (backward)", device, dtype, grad_error, tolerance))
    return results


def check_all(device="cpu", dtype=torch.float32, seed: int | None = None) -> list[CheckResult]:
    """Every op once, on a random mixed-gate problem with extra tokens, S = 4,
    split sizes {4, 2, 1}, a non-square grid and C not a multiple of 8 (the
    routing and pooling ops also with C = 32, and on a grid with ragged borders)."""
    generator = torch.Generator().manual_seed(
        int(torch.randint(0, 2**31 - 1, (1,))) if seed is None else seed)
    device, name = torch.device(device), str(dtype).replace("torch.", "")
    tol = TOLERANCE[dtype]
    case = random_case(3, (3, 2), (4, 2, 1), 1, 21, dtype, device, generator)
    table, ref_table = case.table, reference.reference_table(
        case.indices.cpu(), case.split_sizes, case.region_size, case.num_extra)
    route_error = float(not all(
        torch.equal(a.cpu(), b.cpu()) for a, b in zip(
            (table.rows, table.region_start, table.region_k, table.offsets, table.lengths),
            (ref_table.rows, ref_table.region_start, ref_table.region_k, ref_table.offsets,
             ref_table.lengths))))
    results = [CheckResult("route_to_patches", device.type, "int64", route_error, 0.0)]

    ref_table = reference.reference_table(case.indices, case.split_sizes, case.region_size,
                                          case.num_extra)
    x = case.x
    results += _check_pooling(case, ref_table, "", name, tol, generator)
    # C = 32 fills whole 16-byte packs in every dtype, the vector path of the CUDA kernels
    packed = random_case(2, (2, 3), (4, 2, 1), 2, 32, dtype, device, generator)
    results += _check_pooling(packed, reference.reference_table(
        packed.indices, packed.split_sizes, packed.region_size, packed.num_extra), " [C=32]", name, tol, generator)
    # an 11 x 7 grid in regions of 4: the last region row keeps 3 lines, the last column 3 tokens
    ragged = random_case(2, (3, 2), (4, 2, 1), 1, 32, dtype, device, generator, grid=(11, 7))
    ragged_ref = reference.reference_table(ragged.indices.cpu(), ragged.split_sizes, ragged.region_size,
                                           ragged.num_extra, (11, 7))
    results.append(CheckResult("route_to_patches [ragged]", device.type, "int64", float(not all(
        torch.equal(a.cpu(), b.cpu()) for a, b in zip(
            (ragged.table.rows, ragged.table.region_start, ragged.table.region_k, ragged.table.offsets,
             ragged.table.lengths),
            (ragged_ref.rows, ragged_ref.region_start, ragged_ref.region_k, ragged_ref.offsets,
             ragged_ref.lengths)))), 0.0))
    results += _check_pooling(ragged, reference.reference_table(
        ragged.indices, ragged.split_sizes, ragged.region_size, ragged.num_extra, (11, 7)), " [ragged]", name, tol,
        generator)

    heads, head_dim, keys = 3, 24, 37
    shape_q, shape_kv = (table.total, heads, head_dim), (table.batch, heads, keys, head_dim)
    q, k, v = (torch.randn(s, generator=generator, dtype=torch.float64).to(device, dtype)
               for s in (shape_q, shape_kv, shape_kv))
    scale = head_dim ** -0.5
    results += _compare("varlen_attention", device.type, name,
                        lambda q, k, v: varlen_attention(q, k, v, table, scale),
                        lambda q, k, v: reference.varlen_attention(q, k, v, ref_table.offsets, scale),
                        [q, k, v], tol)

    # packed rows sampling a 5 x 7 value map, a third of their points outside it
    value = torch.randn(table.batch, 5, 7, heads, head_dim, generator=generator, dtype=torch.float64)
    locations = off_grid_points(table.total, heads, 4, (5, 7), 3.0, generator)
    weights = torch.rand(table.total, heads, 4, generator=generator, dtype=torch.float64)
    results += _compare("deformable_attention", device.type, name,
                        lambda v, l, w: deformable_attention(v, l, w, table),
                        lambda v, l, w: reference.deformable_attention(v, l, w, ref_table.offsets),
                        [t.to(device, dtype) for t in (value, locations, weights)], tol)

    grid = table.grid
    args = (case.split_sizes, case.region_size, case.num_extra, grid)
    results += _compare("multigrain_compress", device.type, name,
                        lambda x: multigrain_compress(x, *args),
                        lambda x: reference.multigrain_compress(x, *args), [x], tol)
    delta = torch.randn_like(multigrain_compress(x, *args))
    gates = torch.nn.functional.one_hot(case.indices, len(case.split_sizes)).to(dtype)
    results += _compare("multigrain_restore", device.type, name,
                        lambda x, d, g: multigrain_restore(x, d, g, *args),
                        lambda x, d, g: reference.multigrain_restore(x, d, g, *args),
                        [x, delta, gates], tol)
    if device.type == "cpu" and dtype in (torch.float32, torch.float64):  # the CPU scorer's precisions
        results.append(_check_scorer(dtype, name, generator))
    return results


def _check_pooling(case: Case, ref_table, label: str, name: str, tol: float,
                   generator: torch.Generator) -> list[CheckResult]:
    table, x, device = case.table, case.x, case.x.device.type
    comp = compress(x, table).detach()
    q2 = torch.randn(comp.shape, generator=generator, dtype=torch.float64).to(x.device, x.dtype)
    results = _compare(f"compress{label}", device, name, lambda x: compress(x, table),
                       lambda x: reference.compress(x, ref_table), [x], tol)
    results += _compare(f"decompress{label}", device, name, lambda d, r: decompress(d, table, r),
                        lambda d, r: reference.decompress(d, ref_table, r), [q2, x], tol)
    results += _compare(f"restore{label}", device, name, lambda x, q, c: restore(x, q, c, table),
                        lambda x, q, c: reference.restore(x, q, c, ref_table), [x, q2, comp], tol)
    return results


def _check_scorer(dtype, name: str, generator: torch.Generator) -> CheckResult:
    """Counts and histograms must be identical to the reference's; the error is
    theirs (0 or inf) or the largest AP difference."""
    grid = torch.rand(4, 1, 3, 4, generator=generator, dtype=torch.float64)
    maps = torch.nn.functional.interpolate(grid, size=(37, 29), mode="bilinear")[:, 0].to(dtype)
    masks = torch.rand(maps.shape, generator=generator) < 0.3
    counts, ap, histograms = segmentation_scores(maps, masks, 10)
    ref_counts, ref_ap, ref_histograms = reference.segmentation_scores(maps, masks, 10)
    identical = torch.equal(counts, ref_counts) and torch.equal(histograms, ref_histograms)
    error = float((ap - ref_ap).abs().max()) if identical else float("inf")
    return CheckResult("segmentation_scores", "cpu", name, error, 1e-12)
